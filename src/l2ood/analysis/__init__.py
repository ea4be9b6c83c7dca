"""Why it works: neural-collapse metrics (:mod:`.collapse`), tracking during training (:mod:`.track`) and the
analysis report (:mod:`.report`)."""

"""Deployment: the HTTP screening service (:mod:`l2ood.deploy.service`) and ONNX export
(:mod:`l2ood.deploy.export`). Their third-party libraries are optional extras, imported on use."""

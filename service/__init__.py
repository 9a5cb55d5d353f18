"""podgate: a REST-controlled port-forwarding service for Kubernetes."""

"""podgate: a REST-controlled port-forwarding service for Kubernetes."""

__version__ = "0.1.0"

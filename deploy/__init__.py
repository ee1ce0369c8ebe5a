"""Deployment of the suite: the one list of services (`deploy.services`), the generator of the compose
file and the Kubernetes base (`python -m deploy.generate [--check]`), a kustomize-equivalent renderer and
the offline validators used by tests/test_deploy_*.py."""

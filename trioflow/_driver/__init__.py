"""The trio driver: runs a workflow graph in nurseries and cancel scopes (see ``_execution``)."""

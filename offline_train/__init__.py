"""shopscore offline training: builds training sets by replaying the service's feature code."""

"""Drover over HTTP: the JSON API, the dashboard and the chatops webhook (``drover api``)."""

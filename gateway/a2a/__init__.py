"""The A2A gateway: agent products served at ``/agents/<product>`` (``server``), their
cards (``card``), the gateway's task ids (``ids``), v0.3 ⇄ v1.0 (``translate``), the
agents behind them (``upstream``) and their health (``health``)."""

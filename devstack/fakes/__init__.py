"""Local stand-ins for LLM vendors, each speaking its vendor's real wire format.

They share one script (:mod:`devstack.fakes.script`): what a fake answers depends only
on the model name it is asked for and the conversation, so the same test can run
against every vendor and expect the same reply, tool call and token counts.
"""

"""Encryption of updates and adapters: updates sealed to the server (`sealing`), the server's
signatures (`signing`), personal adapter files encrypted at rest (`at_rest`), secure aggregation
of weighted vectors (`secagg`).

Plain library code: no Flower messages, no CLI prompts. Each part raises its own subclass of
`shared.errors.LoraXSError` with a one-line reason, and nothing else, on any bad input.
"""

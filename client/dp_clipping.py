"""Client-side clipping for `dp = client-fixed`: Flower's own `fixedclipping_mod`, fitted to the
LoRA-XS messages.

The server's DifferentialPrivacyClientSideFixedClipping puts "clipping_norm" in the train config;
the mod then clips (reply - received) to that L2 norm over the r x r matrices and the head.
It accepts exactly one ArrayRecord each way, so the factor bundle of a node's first message
is held aside while it runs (and handed to the ClientApp as sent), and a reply without adapter
arrays ("unknown-fingerprint": nothing to clip) passes through untouched.
Messages without a clipping norm (no client-side DP) are not touched at all.
"""

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from shared.federation.keys import ARRAYS, BASIS, CONFIG


class _NothingToClip(Exception):
    def __init__(self, reply: Message):
        super().__init__("the reply carries no adapter arrays")
        self.reply = reply


def client_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    content = msg.content
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or CONFIG not in content
        or KEY_CLIPPING_NORM not in content[CONFIG]
    ):
        return call_next(msg, context)
    basis = content[BASIS] if BASIS in content else None
    if basis is not None:
        del content[BASIS]

    def with_factors(message: Message, ctx: Context) -> Message:
        if basis is not None:
            message.content[BASIS] = basis
        reply = call_next(message, ctx)
        if not reply.has_error() and ARRAYS not in reply.content:
            raise _NothingToClip(reply)
        return reply

    try:
        return fixedclipping_mod(msg, context, with_factors)
    except _NothingToClip as passed:
        return passed.reply

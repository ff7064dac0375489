"""partition: split the block stack into encoder (dense), middle (sparse-able) and decoder (dense)."""
from sprintc.errors import PassError
from sprintc.graph import block_nodes
from sprintc.pipeline import PassResult, register


@register("partition")
def partition(gm, cfg, ctx):
    blocks = block_nodes(gm, ctx.blocks)
    n = len(blocks)
    enc, dec = cfg.encoder, cfg.decoder
    if cfg.middle is not None:
        start, stop = cfg.middle
        if not 0 <= start < stop <= n:
            raise PassError(f"passes.partition.middle: blocks [{start}, {stop}) are outside the model, which has blocks 0..{n - 1}")
        enc, dec = start, n - stop
    if enc + dec >= n:
        raise PassError(f"passes.partition: encoder {enc} + decoder {dec} blocks leave no middle block of the {n} in {ctx.blocks}")
    for i, node in enumerate(blocks):
        node.meta["stage"] = "encoder" if i < enc else ("middle" if i < n - dec else "decoder")
    blocks[enc].args[0].meta["role"] = "encoder_out"  # what the middle and the fusion read
    blocks[n - dec - 1].meta["role"] = "middle_out"
    return PassResult(gm, True)

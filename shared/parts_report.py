"""What `client.run` prints about the personal model's parts (both runtimes): which it kept and
why, and how calibrated it is on the held-out split (shared/personal_parts.py chooses them)."""

from shared.personal_parts import HeldOut, PartsChoice


def parts_lines(choice: PartsChoice | None) -> list[str]:
    """Which parts the personal model kept (encoder, lexical, temperature), and why."""
    if choice is None:
        return ["parts kept: encoder only (no lexical part or temperature for this task or model)"]
    scores = choice.scores
    lines = [
        "parts kept: encoder (the LoRA-XS adapter and its head)"
        + (", lexical" if choice.mix else "")
        + (", temperature" if choice.parts.temperature != 1.0 else "")
    ]
    if len(scores) > 1:
        by_mix = ", ".join(f"{mix:g}: {acc:.3f}/{loss:.3f}" for mix, (acc, loss) in scores.items())
        why = (
            f"kept at share {choice.mix:g} ({choice.vocabulary} wordpieces and pairs): validation loss "
            f"{scores[0.0][1]:.4f} -> {scores[choice.mix][1]:.4f}, accuracy {scores[0.0][0]:.4f} -> "
            f"{scores[choice.mix][0]:.4f}"
            if choice.mix
            else "not kept: no share beat the encoder alone on validation loss while holding its accuracy"
        )
        when = (
            "chosen on the start's validation logits, then R and the head trained around it (--joint-lexical)"
            if choice.joint
            else "chosen after training"
        )
        lines.append(
            f"lexical part (alone {choice.lexical_only_accuracy:.3f} on validation), {when}: {why}; "
            f"validation accuracy/calibrated loss by share of the pooled calibrated logits ({by_mix})"
        )
    elif not choice.lexical_tried:
        lines.append("lexical part: off (--no-lexical)")
    else:
        lines.append("lexical part: not tried (no wordpiece or pair occurs in two fit texts)")
    t = choice.parts.temperature
    lines.append(
        f"temperature {t:.3g}: validation NLL {choice.val_nll[0]:.4f} -> {choice.val_nll[1]:.4f}, "
        f"ECE {choice.val_ece[0]:.4f} -> {choice.val_ece[1]:.4f}"
        if t != 1.0
        else "temperature: none (--no-calibration, or none lowered the validation loss by more than its noise)"
    )
    return lines


def calibration_line(result: HeldOut) -> str:
    return (
        f"held-out calibration (temperature {result.temperature:.3g}): NLL {result.nll_before:.4f} -> "
        f"{result.nll_after:.4f}, ECE (15 bins) {result.ece_before:.4f} -> {result.ece_after:.4f} "
        f"(a perfectly calibrated model would show about {result.ece_floor:.3f} on {result.examples} texts)"
    )


def held_out_lines(result: HeldOut, encoder_accuracy: float) -> list[str]:
    """The personal model's held-out calibration (and the encoder alone when the parts changed it)."""
    lines = (
        []
        if result.accuracy == encoder_accuracy
        else [f"held-out accuracy of the encoder alone: {encoder_accuracy:.4f}"]
    )
    return [*lines, calibration_line(result)]

"""What a call's tokens cost: a price table per Live model, and the estimate.

Why its own module: prices change more often than anything else here, and
the rules for pricing what the Live API reports (modalities, thinking,
tool-use and cached tokens) deserve one place to read and check against the
docs/operations.md's sources. The recorder stores the result (records.py); Settings'
PRICE_* variables override the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["PriceTable", "MODEL_PRICES", "estimate_cost"]


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens, by modality (TEXT, and every other modality priced as
    audio). `cached_fraction` is the share of the input price a cached prompt token
    costs: 1.0 assumes no discount, as no Live model has a published cache price.
    The defaults are gemini-3.8-live's (MODEL_PRICES); docs/operations.md gives each price's
    date and source."""

    audio_input: float = 0.75
    audio_output: float = 4.50
    text_input: float = 0.75
    text_output: float = 4.50
    cached_fraction: float = 1.0

    @classmethod
    def for_model(cls, model: str | None) -> "PriceTable":
        """The table of `model`'s family; an unknown model gets the default model's
        prices, so a cost is always estimated (and docs/operations.md says to set yours)."""
        for prefix, table in MODEL_PRICES.items():
            if model and str(model).removeprefix("models/").startswith(prefix):
                return table
        return cls()

    @classmethod
    def from_settings(cls, settings: Any) -> "PriceTable":
        """The model's table, with every PRICE_* variable that is set taking precedence."""
        base = cls.for_model(getattr(settings, "gemini_model", None))
        overrides = {
            kind: float(value)
            for kind in ("audio_input", "audio_output", "text_input", "text_output")
            if (value := getattr(settings, f"price_{kind}_per_mtok", None)) is not None
        }
        if (fraction := getattr(settings, "price_cached_input_fraction", None)) is not None:
            overrides["cached_fraction"] = float(fraction)
        return cls(**{**vars(base), **overrides})


#: Prices per Live model family, by model-name prefix (docs/operations.md lists each one's
#: date and source). 3.8 Live: third-party gateways' figures ($0.75 in, $4.50 out, no
#: modality split), as Google's page gave none. 2.5 native audio: Google's published
#: Live prices (audio in $3, out $12; text in $0.50, out $2), the same on Vertex.
MODEL_PRICES: dict[str, PriceTable] = {
    "gemini-3.8-live": PriceTable(),
    "gemini-2.5-flash-native-audio": PriceTable(audio_input=3.0, audio_output=12.0, text_input=0.5, text_output=2.0),
    "gemini-live-2.5-flash": PriceTable(audio_input=3.0, audio_output=12.0, text_input=0.5, text_output=2.0),
}


_OUTPUT_SIDES = ("RESPONSE", "OUTPUT", "CANDIDATES")


def estimate_cost(prompt: int, response: int, by_modality: Mapping[str, int], prices: PriceTable) -> float:
    """Estimated USD for a call's tokens.

    `by_modality` keys are modalities of input tokens (`AUDIO`, `TEXT`, ... from
    `prompt_tokens_details`), or `response:AUDIO` / `output:TEXT` for output
    tokens. TEXT is priced as text, every other modality (audio, image, video,
    unspecified) as audio. The billed extras `live.py` reports have their own prefix:

    - `thoughts:` is thinking, billed as output (and not in the prompt or response);
    - `tool_use:` is tool-use prompt tokens, billed as input on top of the prompt;
    - `cached:` tokens are part of the prompt, billed at `cached_fraction` of the
      input price: they are taken out of the same modality's input.

    Rules where the details fall short:

    - no output details: the response is audio (a native-audio model speaks);
    - input details adding up to more than `prompt` were merged with the
      response's (as `live.py` once reported them): the response is taken out of AUDIO;
    - input tokens no detail accounts for are priced as audio (the dearer guess).
    """
    inputs: dict[str, int] = {}
    outputs: dict[str, int] = {}
    extras: dict[str, dict[str, int]] = {"THOUGHTS": {}, "TOOL_USE": {}, "CACHED": {}}
    for key, count in by_modality.items():
        if not isinstance(count, (int, float)) or isinstance(count, bool) or count <= 0:
            continue
        side, sep, modality = str(key).upper().rpartition(":")
        if not sep:
            side, modality = "", str(key).upper()
        bucket = outputs if side in _OUTPUT_SIDES else extras.get(side, inputs)
        bucket[modality] = bucket.get(modality, 0) + int(count)
    prompt, response = max(0, int(prompt)), max(0, int(response))
    if not outputs:
        outputs = {"AUDIO": response}
        if sum(inputs.values()) > prompt and response:
            inputs["AUDIO"] = max(0, inputs.get("AUDIO", 0) - response)
    unaccounted = prompt - sum(inputs.values())
    if unaccounted > 0:
        inputs["AUDIO"] = inputs.get("AUDIO", 0) + unaccounted
    for modality, count in extras["CACHED"].items():
        # A cached token of unknown modality is taken from, and priced like, audio.
        price_as = "TEXT" if modality == "TEXT" else "AUDIO"
        inputs[price_as] = max(0, inputs.get(price_as, 0) - count)

    def input_price(modality: str) -> float:
        return prices.text_input if modality == "TEXT" else prices.audio_input

    def output_price(modality: str) -> float:
        return prices.text_output if modality == "TEXT" else prices.audio_output

    usd = sum(count * input_price(m) for m, count in inputs.items())
    usd += sum(count * input_price(m) for m, count in extras["TOOL_USE"].items())
    usd += sum(count * input_price(m) * prices.cached_fraction for m, count in extras["CACHED"].items())
    usd += sum(count * output_price(m) for m, count in outputs.items())
    usd += sum(count * output_price(m) for m, count in extras["THOUGHTS"].items())
    return round(usd / 1_000_000, 6)

"""Who may reach the agent, and what the logs may say about them.

Every way in is checked by this package, without I/O of its own: the routes
(`routes_twilio` for webhooks, `routes_media` for media streams) read requests
and sockets, and `Gatekeeper` decides.

- `signatures`: Twilio's `X-Twilio-Signature` on webhooks and on the media
  stream's upgrade (the `wss://` URL, empty params; the trailing-slash variant
  is accepted, as Twilio documents).
- `gatekeeper`: the gate. Each CallSid is answered once (a signed request
  carries no timestamp, so a captured one could otherwise be replayed to mint
  a stream token); per-caller limits (simultaneous calls, calls per hour); the
  start-up refusal to serve unverified on a public deployment.
- `stream_tokens`: the per-call, single-use, short-lived token that binds a
  stream to one signed webhook (its CallSid, From and To, an expiry). The
  caller's identity (From) reaches tools only from that verified token.
- `destinations`: the allow-list for transfers and outbound calls.
- `log_redaction`: secrets replaced, phone numbers masked (MASK_PHONE_NUMBERS).

Without TWILIO_AUTH_TOKEN nothing can be verified (local development,
simulated calls): streams are accepted and the caller identity is taken,
unverified, from the stream's own `From` parameter.

The public names are re-exported here, so callers import from
``telephony.security``.
"""

from ..errors import Rejected
from .destinations import DestinationNotAllowed, check_destination, destination_allowed
from .gatekeeper import WEBHOOK_MEMORY_S, CallerIdentity, Gatekeeper, check_deployment
from .log_redaction import REDACTOR, LogRedactor, install_log_redaction, mask_phone
from .signatures import TwilioSignatures, stream_urls, webhook_urls
from .stream_tokens import LEG_PARAMETER, MAX_IDENTITY_CHARS, TOKEN_PARAMETER, StreamTokens, stream_token_secret

__all__ = [
    "CallerIdentity", "Rejected", "DestinationNotAllowed", "Gatekeeper", "StreamTokens", "TOKEN_PARAMETER", "LEG_PARAMETER",
    "MAX_IDENTITY_CHARS", "WEBHOOK_MEMORY_S", "TwilioSignatures", "mask_phone", "webhook_urls", "stream_urls",
    "stream_token_secret", "check_deployment", "destination_allowed", "check_destination",
    "install_log_redaction", "LogRedactor", "REDACTOR",
]

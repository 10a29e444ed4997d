"""The model a request names, in the ASE payload's header: malformed ones are payload errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ase.build import bulk

from mlipx_serve.errors import PayloadError
from mlipx_serve.wire.payload import encode_request, read_request

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("model, says", [
    ("abc", "'model' must be an object"),
    ({"fingerprint": "ABC"}, "64 lowercase hex"),
    ({"fingerprint": "a" * 64, "definition": [1]}, "model.definition must be an object"),
])
def test_a_malformed_model_in_a_request_is_a_payload_error(model: Any, says: str) -> None:
    frames = [bytes(f) for f in encode_request(bulk("Cu"), ["energy"])]
    header = json.loads(frames[0])
    header["model"] = model
    with pytest.raises(PayloadError, match=says):
        read_request([json.dumps(header).encode(), *frames[1:]])


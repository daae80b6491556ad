"""Registry auth challenges and dockerconfigjson credentials."""

import base64
import json

import pytest

from cri.images import AuthenticationError, Credentials, parse_dockerconfigjson
from cri.images.auth import parse_challenge


def test_bearer_challenge_params() -> None:
    """realm, service and scope are read, quoted values included."""
    ch = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:lib/app:pull"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:lib/app:pull",
    }


def test_basic_challenge() -> None:
    """A Basic challenge is recognized with its realm."""
    ch = parse_challenge('Basic realm="Registry Realm"')
    assert ch.scheme == "basic" and ch.params["realm"] == "Registry Realm"


def test_dockerconfigjson_auth_field_and_hub_aliases() -> None:
    """`auth` is base64 user:pass; Docker Hub's v1 URL key maps to docker.io."""
    doc = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p:with:colons").decode()},
            "127.0.0.1:5000": {"username": "a", "password": "b"},
        }
    }
    creds = parse_dockerconfigjson(json.dumps(doc))
    assert creds["docker.io"] == Credentials(username="u", password="p:with:colons")
    assert creds["127.0.0.1:5000"] == Credentials(username="a", password="b")


def test_credentials_never_print_the_password() -> None:
    """repr() redacts the password, so logs and errors cannot leak it."""
    assert "secret" not in repr(Credentials(username="u", password="secret"))


@pytest.mark.parametrize("body", ["nope", "{}", '{"auths": []}'])
def test_malformed_dockerconfigjson(body: str) -> None:
    """A secret that is not a dockerconfigjson gives an AuthenticationError."""
    with pytest.raises(AuthenticationError):
        parse_dockerconfigjson(body)

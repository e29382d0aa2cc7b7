import enum
import logging
from typing import Literal

import msgspec
import pytest

from rawdrive_platform.config import CommonSettings, ConfigError, Secret, load_settings

REQUIRED = {
    "RAWDRIVE_DATABASE_URL": "postgresql://rawdrive@127.0.0.1:5432/rawdrive",
    "RAWDRIVE_S3_BUCKET": "rawdrive",
    "RAWDRIVE_S3_ACCESS_KEY_ID": "AKIA1",
    "RAWDRIVE_S3_SECRET_ACCESS_KEY": "hunter2-very-secret",
}


class Codec(enum.Enum):
    WEBP = "webp"
    AVIF = "avif"


class ProcessorSettings(CommonSettings, kw_only=True, frozen=True):
    variant_widths: tuple[int, ...] = (2560, 1280, 320)
    codec: Codec = Codec.WEBP
    strip_metadata: bool = True
    quality: float = 0.8
    mode: Literal["fast", "best"] = "fast"
    webhook_token: Secret | None = None


def test_defaults_apply_when_only_required_variables_are_set():
    settings = load_settings(CommonSettings, REQUIRED)
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.s3_endpoint is None
    assert settings.s3_region == "auto"
    assert settings.stream_replicas == 1
    assert settings.log_level == "INFO"
    assert settings.s3_secret_access_key.reveal() == "hunter2-very-secret"


def test_strings_are_converted_to_each_fields_type():
    env = REQUIRED | {
        "RAWDRIVE_S3_ENDPOINT": "http://127.0.0.1:8333",
        "RAWDRIVE_STREAM_REPLICAS": "3",
        "RAWDRIVE_HEALTH_PORT": "9000",
        "RAWDRIVE_LOG_LEVEL": "DEBUG",
        "RAWDRIVE_VARIANT_WIDTHS": "1024, 512",
        "RAWDRIVE_CODEC": "avif",
        "RAWDRIVE_STRIP_METADATA": "false",
        "RAWDRIVE_QUALITY": "0.5",
        "RAWDRIVE_MODE": "best",
        "RAWDRIVE_WEBHOOK_TOKEN": "tok",
    }
    settings = load_settings(ProcessorSettings, env)
    assert (settings.s3_endpoint, settings.stream_replicas, settings.health_port) == (
        "http://127.0.0.1:8333", 3, 9000,
    )
    assert settings.variant_widths == (1024, 512)
    assert settings.codec is Codec.AVIF
    assert settings.strip_metadata is False
    assert settings.quality == 0.5
    assert settings.mode == "best"
    assert settings.webhook_token == Secret("tok")


@pytest.mark.parametrize("text, value", [("1", True), ("0", False), ("TRUE", True)])
def test_booleans_accept_true_false_one_zero(text, value):
    env = REQUIRED | {"RAWDRIVE_STRIP_METADATA": text}
    assert load_settings(ProcessorSettings, env).strip_metadata is value


def test_an_empty_optional_variable_means_none():
    env = REQUIRED | {"RAWDRIVE_S3_ENDPOINT": ""}
    assert load_settings(CommonSettings, env).s3_endpoint is None


@pytest.mark.parametrize(
    "variable, value, expected",
    [
        ("RAWDRIVE_STREAM_REPLICAS", "three", "expected an integer >= 1 and <= 5"),
        ("RAWDRIVE_STREAM_REPLICAS", "9", "expected an integer >= 1 and <= 5"),
        ("RAWDRIVE_HEALTH_PORT", "70000", "<= 65535"),
        ("RAWDRIVE_LOG_LEVEL", "LOUD", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("RAWDRIVE_STRIP_METADATA", "yes", "expected true/false/1/0"),
        ("RAWDRIVE_QUALITY", "high", "expected a number"),
        ("RAWDRIVE_CODEC", "gif", "expected one of webp, avif"),
        ("RAWDRIVE_VARIANT_WIDTHS", "1024,big", "expected a comma-separated list, each an integer"),
    ],
)
def test_a_bad_value_is_reported_with_its_variable_value_and_expectation(
    variable, value, expected
):
    with pytest.raises(ConfigError) as raised:
        load_settings(ProcessorSettings, REQUIRED | {variable: value})
    [problem] = raised.value.problems
    assert problem.startswith(f"{variable}={value!r}: ")
    assert expected in problem


def test_all_bad_and_missing_variables_are_reported_together():
    env = {"RAWDRIVE_STREAM_REPLICAS": "x", "RAWDRIVE_LOG_LEVEL": "LOUD"}
    with pytest.raises(ConfigError) as raised:
        load_settings(CommonSettings, env)
    message = str(raised.value)
    for variable in [
        "RAWDRIVE_DATABASE_URL is required",
        "RAWDRIVE_S3_BUCKET is required",
        "RAWDRIVE_S3_ACCESS_KEY_ID is required",
        "RAWDRIVE_S3_SECRET_ACCESS_KEY is required",
        "RAWDRIVE_STREAM_REPLICAS='x'",
        "RAWDRIVE_LOG_LEVEL='LOUD'",
    ]:
        assert variable in message
    assert len(raised.value.problems) == 6


def test_a_secret_never_appears_in_reprs_strings_or_logs(caplog):
    settings = load_settings(CommonSettings, REQUIRED)
    secret = "hunter2-very-secret"
    logging.getLogger("test").warning("settings %s %r", settings, settings)
    assert secret not in repr(settings)
    assert secret not in str(settings.s3_secret_access_key)
    assert secret not in caplog.text
    assert "***" in repr(settings)


def test_a_secret_refuses_to_be_json_encoded_by_accident():
    with pytest.raises(TypeError):
        msgspec.json.encode(load_settings(CommonSettings, REQUIRED))


def test_errors_about_a_secret_never_echo_its_value():
    class Strict(msgspec.Struct):
        token: tuple[Secret, Secret]

    with pytest.raises(ConfigError) as raised:
        load_settings(Strict, {"RAWDRIVE_TOKEN": "only-one-s3cr3t"})
    assert "s3cr3t" not in str(raised.value)
    assert "RAWDRIVE_TOKEN" in str(raised.value)

"""json_to_avro / avro_to_json lose nothing, on real CloudTrail data and on pinned edge cases."""

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.cloudtrail.record import (
    EXTRA_FIELDS,
    JSON_TEXT_FIELDS,
    READER_SCHEMA,
    REQUIRED_FIELDS,
    SCHEMA_TEXT,
    NotCloudTrailError,
    avro_to_json,
    json_to_avro,
)

DATASETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets"
DATASET_NAMES = (
    sorted(path.name for path in DATASETS.iterdir() if path.is_dir()) if DATASETS.is_dir() else []
)

MINIMAL: dict[str, Any] = {
    "eventVersion": "1.08",
    "eventSource": "iam.amazonaws.com",
    "eventName": "CreateAccessKey",
}


def canonical(value: Any) -> str:
    """Equality that also tells 1 from 1.0 from true, which `==` does not."""
    return json.dumps(value, sort_keys=True)


def avro_bytes_round_trip(record: dict[str, Any]) -> Any:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, READER_SCHEMA, record)
    return fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), READER_SCHEMA, None)


def assert_lossless(original: dict[str, Any]) -> dict[str, Any]:
    """Assert JSON -> Avro record -> Avro bytes -> Avro record -> JSON gives back `original`."""
    converted = json_to_avro(original)
    assert canonical(avro_to_json(converted)) == canonical(original)
    from_bytes = avro_bytes_round_trip(converted)
    assert from_bytes == converted
    assert canonical(avro_to_json(from_bytes)) == canonical(original)
    return converted


def dataset_records(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every record of a dataset folder: S3 delivery files, JSON arrays and JSON lines."""
    for path in sorted(folder.rglob("*.gz")):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        if path.name.endswith(".jsonl.gz"):
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            document = json.loads(text)
            records = document["Records"] if isinstance(document, dict) else document
        for index, record in enumerate(records):
            yield f"{path.relative_to(folder)}[{index}]", record


@pytest.mark.skipif(not DATASETS.is_dir(), reason="../shared/datasets is absent")
@pytest.mark.parametrize("dataset", DATASET_NAMES)
def test_every_dataset_record_survives_json_avro_bytes_and_back(dataset: str) -> None:
    failures: list[str] = []
    count = 0
    for where, record in dataset_records(DATASETS / dataset):
        count += 1
        converted = json_to_avro(record)
        from_bytes = avro_bytes_round_trip(converted)
        if from_bytes != converted or canonical(avro_to_json(from_bytes)) != canonical(record):
            failures.append(where)
    assert count > 0
    assert failures == []


def test_known_fields_are_typed_and_extra_fields_stays_empty() -> None:
    record = {
        **MINIMAL,
        "eventTime": "2024-07-30T21:53:13Z",
        "readOnly": False,
        "requestParameters": {"userName": "bob"},
        "resources": [
            {"ARN": "arn:aws:iam::1:user/bob", "accountId": "1", "type": "AWS::IAM::User"}
        ],
        "userIdentity": {
            "type": "IAMUser",
            "userName": "alice",
            "sessionContext": {"attributes": {"mfaAuthenticated": "false"}},
        },
    }
    converted = assert_lossless(record)
    assert converted["readOnly"] is False
    assert converted["requestParameters"] == '{"userName":"bob"}'
    assert converted["resources"][0]["ARN"] == "arn:aws:iam::1:user/bob"
    assert converted["userIdentity"]["sessionContext"]["attributes"]["mfaAuthenticated"] == "false"
    assert converted[EXTRA_FIELDS] is None
    assert converted["userIdentity"][EXTRA_FIELDS] is None


def test_converted_record_has_every_schema_field_like_a_record_fastavro_reads() -> None:
    converted = json_to_avro(MINIMAL)
    assert set(converted) == {field["name"] for field in json.loads(SCHEMA_TEXT)["fields"]}
    assert converted["errorCode"] is None
    assert avro_bytes_round_trip(converted) == converted


def test_unknown_top_level_keys_go_to_extra_fields() -> None:
    record = {**MINIMAL, "@timestamp": "2020-09-14T00:44:23.000Z", "@version": "1"}
    converted = assert_lossless(record)
    assert json.loads(converted[EXTRA_FIELDS]) == {
        "@timestamp": "2020-09-14T00:44:23.000Z",
        "@version": "1",
    }


def test_unknown_nested_keys_go_to_their_own_levels_extra_fields() -> None:
    record = {
        **MINIMAL,
        "userIdentity": {
            "type": "AssumedRole",
            "newIdentityField": {"deep": [1, 2.5]},
            "sessionContext": {"sessionIssuer": {"userName": "role", "issuerFlag": True}},
        },
        "resources": [{"ARN": "arn:x", "tags": {"k": "v"}}],
        "tlsDetails": {"tlsVersion": "TLSv1.3", "keyExchange": "x25519"},
    }
    converted = assert_lossless(record)
    identity = converted["userIdentity"]
    assert json.loads(identity[EXTRA_FIELDS]) == {"newIdentityField": {"deep": [1, 2.5]}}
    issuer = identity["sessionContext"]["sessionIssuer"]
    assert json.loads(issuer[EXTRA_FIELDS]) == {"issuerFlag": True}
    assert json.loads(converted["resources"][0][EXTRA_FIELDS]) == {"tags": {"k": "v"}}
    assert json.loads(converted["tlsDetails"][EXTRA_FIELDS]) == {"keyExchange": "x25519"}
    assert converted[EXTRA_FIELDS] is None


def test_json_null_and_absent_key_stay_distinct() -> None:
    with_null = assert_lossless({**MINIMAL, "responseElements": None, "errorCode": None})
    absent = assert_lossless(dict(MINIMAL))
    assert with_null["responseElements"] is None
    assert absent["responseElements"] is None
    assert json.loads(with_null[EXTRA_FIELDS]) == {"responseElements": None, "errorCode": None}
    assert absent[EXTRA_FIELDS] is None
    assert "responseElements" not in avro_to_json(absent)
    assert avro_to_json(with_null)["responseElements"] is None


def test_numbers_keep_int_or_float_type_and_value_in_free_form_objects() -> None:
    parameters = {
        "int": 1,
        "float": 1.0,
        "negativeZero": -0.0,
        "huge": 1e300,
        "bigInt": 123456789012345678901234567890,
        "fraction": 0.1,
        "nested": [{"n": 2}, 2.0],
    }
    converted = assert_lossless({**MINIMAL, "requestParameters": parameters})
    restored = avro_to_json(converted)["requestParameters"]
    assert [type(restored[key]) for key in ("int", "float", "bigInt")] == [int, float, int]
    assert str(restored["negativeZero"]) == "-0.0"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("readOnly", "true"),
        ("managementEvent", 1),
        ("eventTime", 1700000000),
        ("awsRegion", ["us-east-1"]),
        ("userIdentity", "root"),
        ("resources", {"ARN": "arn:x"}),
        ("resources", [{"ARN": "arn:x"}, "arn:y"]),
        ("tlsDetails", None),
    ],
)
def test_value_of_unexpected_type_is_carried_in_extra_fields(key: str, value: Any) -> None:
    converted = assert_lossless({**MINIMAL, key: value})
    assert converted[key] is None
    assert json.loads(converted[EXTRA_FIELDS]) == {key: value}


def test_wrongly_typed_nested_value_stays_at_its_level() -> None:
    record = {
        **MINIMAL,
        "userIdentity": {"sessionContext": {"attributes": {"mfaAuthenticated": True}}},
    }
    converted = assert_lossless(record)
    attributes = converted["userIdentity"]["sessionContext"]["attributes"]
    assert attributes["mfaAuthenticated"] is None
    assert json.loads(attributes[EXTRA_FIELDS]) == {"mfaAuthenticated": True}


def test_empty_objects_survive() -> None:
    record = {
        **MINIMAL,
        "requestParameters": {},
        "resources": [],
        "userIdentity": {"sessionContext": {"sessionIssuer": {}, "webIdFederationData": {}}},
    }
    converted = assert_lossless(record)
    assert converted["requestParameters"] == "{}"
    assert converted["resources"] == []


def test_free_form_field_holding_a_non_object_survives() -> None:
    assert_lossless({**MINIMAL, "requestParameters": "raw", "additionalEventData": [1, "a"]})


def test_lone_surrogate_is_escaped_so_the_record_still_encodes_as_avro() -> None:
    record = {**MINIMAL, "userAgent": "agent\udc80", "requestParameters": {"k": "\ud800"}}
    converted = assert_lossless(record)
    assert converted["userAgent"] is None
    assert converted["requestParameters"] == '{"k":"\\ud800"}'


def test_non_ascii_text_stays_literal_in_json_text() -> None:
    converted = assert_lossless({**MINIMAL, "requestParameters": {"userName": "jürgen-日本"}})
    assert converted["requestParameters"] == '{"userName":"jürgen-日本"}'


def test_input_key_named_extra_fields_is_kept_as_an_unknown_key() -> None:
    converted = assert_lossless({**MINIMAL, EXTRA_FIELDS: {"a": 1}})
    assert json.loads(converted[EXTRA_FIELDS]) == {EXTRA_FIELDS: {"a": 1}}


def test_required_fields_are_version_source_and_name() -> None:
    assert REQUIRED_FIELDS == ("eventVersion", "eventSource", "eventName")


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_record_missing_a_required_field_is_not_cloudtrail(field: str) -> None:
    record = {key: value for key, value in MINIMAL.items() if key != field}
    with pytest.raises(NotCloudTrailError, match=f"{field} is missing"):
        json_to_avro(record)


@pytest.mark.parametrize("value", [None, 1, 1.08, True, ["1.08"], {"v": "1.08"}])
def test_required_field_of_wrong_type_is_not_cloudtrail(value: Any) -> None:
    with pytest.raises(NotCloudTrailError, match=r"eventVersion is .*; it must be a string"):
        json_to_avro({**MINIMAL, "eventVersion": value})


@pytest.mark.parametrize("value", [[MINIMAL], "text", 3, None])
def test_json_value_that_is_not_an_object_is_not_cloudtrail(value: Any) -> None:
    with pytest.raises(NotCloudTrailError, match="expected a JSON object"):
        json_to_avro(value)


def test_schema_is_namespaced_documented_and_evolvable() -> None:
    schema = json.loads(SCHEMA_TEXT)
    assert schema["namespace"] == "io.cloudtrail_detector"

    def check(record: dict[str, Any]) -> None:
        assert record["doc"]
        assert record["fields"][-1]["name"] == EXTRA_FIELDS
        for field in record["fields"]:
            assert field["doc"], field["name"]
            if field["name"] in REQUIRED_FIELDS and record is schema:
                assert field["type"] == "string"
                continue
            assert field["type"][0] == "null"
            assert field["default"] is None
            nested = field["type"][1]
            if isinstance(nested, dict) and nested["type"] == "record":
                check(nested)
            elif isinstance(nested, dict) and nested["type"] == "array":
                check(nested["items"])

    check(schema)


def test_cloudtrail_string_booleans_are_strings_in_the_schema() -> None:
    text_fields = ["sessionCredentialFromConsole", "eventTime"]
    converted = assert_lossless(
        {**MINIMAL, "sessionCredentialFromConsole": "true", "eventTime": "2024-01-01T00:00:00Z"}
    )
    assert [converted[name] for name in text_fields] == ["true", "2024-01-01T00:00:00Z"]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
known_keys = st.sampled_from(
    ["eventTime", "readOnly", "resources", "requestParameters", "userIdentity", "tlsDetails"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=5),
    identity=st.dictionaries(
        st.sampled_from(["type", "userName", "sessionContext", "inScopeOf"]) | st.text(max_size=8),
        json_values,
        max_size=4,
    ),
)
def test_any_json_values_under_known_or_unknown_keys_round_trip(
    top: dict[str, Any], identity: dict[str, Any]
) -> None:
    record = {**top, "userIdentity": identity, **MINIMAL}
    assert_lossless(record)


def test_json_text_fields_are_the_schemas_free_form_objects_at_any_level() -> None:
    assert {"requestParameters", "responseElements", "additionalEventData",
            "serviceEventDetails", "webIdFederationData"} <= JSON_TEXT_FIELDS
    assert "extraFields" not in JSON_TEXT_FIELDS
    assert "eventName" not in JSON_TEXT_FIELDS

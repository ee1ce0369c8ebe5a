"""Bad input the gateway must refuse: (name, expected reason, topic sensor, payload, gateway).

Each case is a different way a field device, a gateway or an attacker gets it wrong.
`{A}` is a sensor of gateway `{GA}`, `{B}` a sensor of another gateway `{GB}`.
"""

from __future__ import annotations

import json

T = "2026-01-01T00:00:00+00:00"  # replaced by a recent time in the tests


def cases(A: str, B: str, GA: str, GB: str, now_iso: str, old_iso: str, future_iso: str) -> list[tuple]:
    def j(obj) -> bytes:
        return json.dumps(obj).encode()

    def msg(**kw) -> dict:
        base = {"sensor_id": A, "time": now_iso, "values": {"pm25": 12.5}}
        base.update(kw)
        return base

    ta, tb = f"city/{GA}/{A}", f"city/{GB}/{B}"
    return [
        ("truncated_json", "malformed_json", ta, b'{"sensor_id": "' + A.encode() + b'", "time"', GA),
        ("empty_payload", "malformed_json", ta, b"", GA),
        ("trailing_garbage", "malformed_json", ta, j(msg()) + b"}}", GA),
        ("single_quotes", "malformed_json", ta, b"{'sensor_id': 'x'}", GA),
        ("nested_too_deep", "malformed_json", ta, b"[" * 3000 + b"]" * 3000, GA),  # RecursionError killed the gateway
        ("json_array", "not_an_object", ta, j([msg()]), GA),
        ("json_string", "not_an_object", ta, j("pm25=12"), GA),
        ("json_number", "not_an_object", ta, b"42", GA),
        ("json_null", "not_an_object", ta, b"null", GA),
        ("invalid_utf8", "bad_encoding", ta, b'{"sensor_id": "\xff\xfe"}', GA),
        ("nan_literal", "non_finite_value", ta, f'{{"sensor_id":"{A}","time":"{now_iso}","values":{{"pm25":NaN}}}}'.encode(), GA),
        ("infinity_literal", "non_finite_value", ta, f'{{"sensor_id":"{A}","time":"{now_iso}","values":{{"pm25":Infinity}}}}'.encode(), GA),
        ("minus_infinity", "non_finite_value", ta, f'{{"sensor_id":"{A}","time":"{now_iso}","values":{{"pm25":-Infinity}}}}'.encode(), GA),
        ("overflow_to_inf", "non_finite_value", ta, f'{{"sensor_id":"{A}","time":"{now_iso}","values":{{"pm25":1e999}}}}'.encode(), GA),
        ("payload_too_large", "payload_too_large", ta, j(msg(values={"pm25": 1.0}, pad="x" * 20_000)), GA),
        ("missing_sensor_id", "schema_violation", ta, j({"time": now_iso, "values": {"pm25": 1.0}}), GA),
        ("missing_time", "schema_violation", ta, j({"sensor_id": A, "values": {"pm25": 1.0}}), GA),
        ("missing_values", "schema_violation", ta, j({"sensor_id": A, "time": now_iso}), GA),
        ("empty_values", "schema_violation", ta, j(msg(values={})), GA),
        ("value_is_string", "schema_violation", ta, j(msg(values={"pm25": "12.5"})), GA),
        ("value_is_null", "schema_violation", ta, j(msg(values={"pm25": None})), GA),
        ("value_is_bool", "schema_violation", ta, j(msg(values={"pm25": True})), GA),
        ("values_is_list", "schema_violation", ta, j(msg(values=[12.5])), GA),
        ("unparsable_time", "schema_violation", ta, j(msg(time="yesterday noon")), GA),
        ("naive_time", "schema_violation", ta, j(msg(time="2026-01-01T00:00:00")), GA),
        ("extra_field", "schema_violation", ta, j(msg(firmware="1.2")), GA),
        ("bad_sensor_id_chars", "schema_violation", f"city/{GA}/{A}", j(msg(sensor_id="a b/c")), GA),
        # valid JSON whose text UTF-8 cannot hold: quoting it in the dead letter crash-looped the gateway
        ("sensor_id_lone_surrogate", "schema_violation", ta, j(msg(sensor_id="\ud800")), GA),
        # NUL is valid JSON, but no PostgreSQL text column takes it: the dead letter crash-looped the sink
        ("sensor_id_with_nul", "schema_violation", ta, j(msg(sensor_id=A + "\u0000")), GA),
        ("quantity_name_with_nul", "schema_violation", ta, j(msg(values={"pm\u0000": "x"})), GA),
        ("negative_seq", "schema_violation", ta, j(msg(seq=-1)), GA),
        ("wire_value_without_unit", "schema_violation", ta, j(msg(values={"pm25": {"value": 0.02}})), GA),
        ("unknown_sensor", "unknown_sensor", f"city/{GA}/ghost-1", j(msg(sensor_id="ghost-1")), GA),
        ("gateway_not_owner", "gateway_not_owner", f"city/{GA}/{B}", j(msg(sensor_id=B)), GA),
        ("topic_names_other_sensor", "topic_mismatch", f"city/{GA}/{A}", j(msg(sensor_id=B, values={"pm25": 13.0})), GA),
        ("topic_too_deep", "topic_mismatch", f"city/{GA}/{A}/extra", j(msg()), GA),
        ("unknown_quantity", "unknown_quantity", ta, j(msg(values={"radon": 3.0})), GA),
        ("unknown_unit", "unknown_unit", ta, j(msg(values={"pm25": {"value": 3.0, "unit": "furlongs"}})), GA),
        ("unit_not_accepted", "unknown_unit", ta, j(msg(values={"temp": {"value": 3.0, "unit": "mg/m3"}})), GA),
        ("timestamp_in_future", "timestamp_in_future", ta, j(msg(time=future_iso)), GA),
        ("timestamp_too_old", "timestamp_too_old", ta, j(msg(time=old_iso)), GA),
        ("other_gateway_unknown_quantity", "unknown_quantity", tb, j({"sensor_id": B, "time": now_iso,
                                                                      "values": {"co2": 400.0}}), GB),
    ]

//! `wharf bench --backend mqtt://…` and `bare+mqtt://…` (the CLI's `mqtt`
//! feature) against the machine's Mosquitto (`scripts/ensure-services.sh`;
//! skipped when it is down, failed under `WHARF_REQUIRE_SERVICES=1`): the
//! publish workload with the adapter row printed as a ratio of the bare
//! rumqttc row, the latency workload, and the consume workload refused
//! (MQTT keeps nothing for a group that does not exist yet). Checks the
//! JSON a user reads, not the timings.

#![cfg(feature = "mqtt")]

mod common;

use serde_json::Value;

fn mqtt_or_skip() -> Option<String> {
    common::service_url_or_skip("mosquitto", "WHARF_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")
}

fn wharf(args: &[&str]) -> std::process::Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    std::process::Command::new(common::BIN)
        .args(&all)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf")
}

#[test]
fn bench_publish_prints_the_mqtt_adapter_as_a_ratio_of_bare_rumqttc() {
    let Some(url) = mqtt_or_skip() else { return };
    common::bench_side_by_side(&url, "publish", 2000, 100, 2, "PUBACK");
}

#[test]
fn bench_latency_runs_on_the_mqtt_adapter() {
    let Some(url) = mqtt_or_skip() else { return };
    let out = wharf(&[
        "--backend",
        &url,
        "--workload",
        "latency",
        "--count",
        "2000",
        "--rate",
        "2000",
        "--fsync-probe",
        "0",
        "--json",
    ]);
    let runs: Value = serde_json::from_str(&common::ok(&out)).expect("json");
    let r = &runs.as_array().expect("one result")[0];
    assert_eq!(r["workload"], "latency", "{r}");
    assert_eq!(r["backend"], url);
}

#[test]
fn bench_consume_is_refused_on_mqtt_with_the_reason() {
    let Some(url) = mqtt_or_skip() else { return };
    for backend in [url.clone(), format!("bare+{url}")] {
        let out = wharf(&[
            "--backend",
            &backend,
            "--workload",
            "consume",
            "--count",
            "100",
        ]);
        assert!(!out.status.success(), "{backend}: consume ran");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("does not exist yet"),
            "{backend}: the refusal says why: {err}"
        );
    }
}

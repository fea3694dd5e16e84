//! The engine over MQTT: firing once, resolving, firing again; `for`; selectors; surviving a restart.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use crate::support::{Mqtt, Platform, at, http};

fn base() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3) - chrono::Duration::minutes(10)
}

#[tokio::test]
async fn fires_once_resolves_and_fires_again() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut mqtt = Mqtt::connect(&platform).await?;
    let rule = platform
        .create_rule(json!({"name": "hot", "metric": "temperature", "comparison": ">", "value": 30,
            "severity": "critical", "message": "{device} {metric} is {value} (> {threshold})"}))
        .await?;
    let t0 = base();

    // Below, then three readings above: one alert.
    for (second, value) in [(0, 25.0), (1, 31.0), (2, 32.0), (3, 33.0)] {
        mqtt.reading("r-1", "temperature", value, at(t0, second)).await?;
    }
    let (topic, fired) = mqtt.next_alert().await?;
    assert_eq!(topic, "alerts/r-1");
    assert_eq!(fired["rule"], "hot");
    assert_eq!(fired["ruleId"], rule["id"]);
    assert_eq!(fired["deviceId"], "r-1");
    assert_eq!(fired["metric"], "temperature");
    assert_eq!(fired["value"], 31.0);
    assert_eq!(fired["message"], "r-1 temperature is 31 (> 30)");
    assert_eq!(fired["severity"], "critical");
    assert_eq!(fired["state"], "firing");
    assert_eq!(fired["ts"], at(t0, 1).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));

    // Back below: the very next alert message is the resolution, so nothing fired again in between.
    mqtt.reading("r-1", "temperature", 20.0, at(t0, 4)).await?;
    let (_, resolved) = mqtt.next_alert().await?;
    assert_eq!(resolved["state"], "resolved", "{resolved}");
    assert_eq!(resolved["alertId"], fired["alertId"]);
    assert_eq!(resolved["value"], 20.0);
    assert_eq!(resolved["severity"], "critical");
    let rows = platform.alert_rows("r-1").await?;
    assert_eq!(rows, vec![("resolved".to_owned(), 31.0, at(t0, 1))]);

    // Above again: a second alert row.
    mqtt.reading("r-1", "temperature", 40.0, at(t0, 5)).await?;
    let (_, again) = mqtt.next_alert().await?;
    assert_eq!(again["state"], "firing");
    assert_eq!(again["value"], 40.0);
    assert_ne!(again["alertId"], fired["alertId"]);
    let rows = platform.alert_rows("r-1").await?;
    assert_eq!(rows, vec![("resolved".to_owned(), 31.0, at(t0, 1)), ("firing".to_owned(), 40.0, at(t0, 5))]);

    // The API lists them by state.
    let firing = http("GET", &platform.url("/api/v1/alerts?state=firing&device=r-1"), None, None).await?;
    assert_eq!(firing.status, 200);
    let firing = firing.json();
    assert_eq!(firing.as_array().map(Vec::len), Some(1), "{firing}");
    assert_eq!(firing[0]["value"], 40.0);
    assert_eq!(firing[0]["rule"], "hot");
    assert_eq!(firing[0]["state"], "firing");
    let resolved = http("GET", &platform.url("/api/v1/alerts?state=resolved"), None, None).await?.json();
    assert_eq!(resolved.as_array().map(Vec::len), Some(1), "{resolved}");
    assert!(resolved[0]["resolvedAt"].is_string());
    let all = http("GET", &platform.url("/api/v1/alerts?limit=1"), None, None).await?.json();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "newest only: {all}");
    assert_eq!(all[0]["value"], 40.0);
    Ok(())
}

#[tokio::test]
async fn for_waits_until_the_condition_has_held_long_enough() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut mqtt = Mqtt::connect(&platform).await?;
    platform.create_rule(json!({"metric": "temperature", "comparison": ">=", "value": 30, "for": "5s"})).await?;
    let t0 = base();
    // Holds at 0 and 1, breaks at 2, holds again from 3: 3 s at 6 is not enough, 6 s at 9 is.
    let readings = [(0, 31.0), (1, 32.0), (2, 20.0), (3, 34.0), (6, 37.0), (9, 40.0), (10, 41.0), (11, 21.0)];
    for (second, value) in readings {
        mqtt.reading("f-1", "temperature", value, at(t0, second)).await?;
    }
    let (_, fired) = mqtt.next_alert().await?;
    assert_eq!(fired["state"], "firing");
    assert_eq!(fired["value"], 40.0);
    assert_eq!(fired["rule"], "temperature >= 30");
    assert_eq!(fired["severity"], "warning");
    let (_, resolved) = mqtt.next_alert().await?;
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["value"], 21.0);
    assert_eq!(platform.alert_rows("f-1").await?, vec![("resolved".to_owned(), 40.0, at(t0, 9))]);
    Ok(())
}

#[tokio::test]
async fn selectors_and_a_restarted_engine() -> anyhow::Result<()> {
    let mut platform = Platform::start().await?;
    let mut mqtt = Mqtt::connect(&platform).await?;
    let created = http(
        "POST",
        &platform.url("/api/v1/devices"),
        None,
        Some(&json!({"id": "hall-1", "tags": ["hall", "floor-1"]})),
    )
    .await?;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    platform
        .create_rule(
            json!({"name": "hall hot", "metric": "temperature", "comparison": ">", "value": 30, "tags": ["hall"]}),
        )
        .await?;
    platform
        .create_rule(json!({"name": "cellar damp", "metric": "humidity", "comparison": ">", "value": 80, "deviceId": "cellar-1"}))
        .await?;
    let t0 = base();

    // Readings that no rule selects come first; the first alert must be the selected device's.
    mqtt.reading("yard-1", "temperature", 50.0, at(t0, 0)).await?;
    mqtt.reading("yard-1", "humidity", 90.0, at(t0, 0)).await?;
    mqtt.reading("hall-1", "humidity", 90.0, at(t0, 0)).await?;
    mqtt.reading("hall-1", "temperature", 50.0, at(t0, 1)).await?;
    let (topic, hall) = mqtt.next_alert().await?;
    assert_eq!(
        (topic.as_str(), &hall["rule"], &hall["state"]),
        ("alerts/hall-1", &json!("hall hot"), &json!("firing"))
    );
    // A batch payload counts too.
    mqtt.publish(
        "sensors/cellar-1",
        json!({"ts": at(t0, 2).timestamp_millis(), "metrics": {"humidity": 85.5}}).to_string(),
    )
    .await?;
    let (topic, cellar) = mqtt.next_alert().await?;
    assert_eq!((topic.as_str(), &cellar["value"]), ("alerts/cellar-1", &json!(85.5)));

    // A new engine takes over: it loads hall-1's firing alert, so the first reading below resolves that alert.
    platform.start_engine().await?;
    mqtt.reading("hall-1", "temperature", 10.0, at(t0, 3)).await?;
    let (topic, resolved) = mqtt.next_alert().await?;
    assert_eq!(topic, "alerts/hall-1");
    assert_eq!(resolved["state"], "resolved");
    assert_eq!(resolved["alertId"], hall["alertId"]);
    // Above again: a second alert. After another restart a reading above does not fire it again,
    // and the next message is that alert's resolution.
    mqtt.reading("hall-1", "temperature", 60.0, at(t0, 4)).await?;
    let (_, second) = mqtt.next_alert().await?;
    assert_eq!(second["state"], "firing");
    platform.start_engine().await?;
    mqtt.reading("hall-1", "temperature", 70.0, at(t0, 5)).await?;
    mqtt.reading("hall-1", "temperature", 5.0, at(t0, 6)).await?;
    let (_, resolved) = mqtt.next_alert().await?;
    assert_eq!((&resolved["state"], &resolved["alertId"]), (&json!("resolved"), &second["alertId"]));
    assert_eq!(
        platform.alert_rows("hall-1").await?,
        vec![("resolved".to_owned(), 50.0, at(t0, 1)), ("resolved".to_owned(), 60.0, at(t0, 4))]
    );
    assert!(platform.alert_rows("yard-1").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn changing_or_deleting_a_rule_resolves_its_alerts() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut mqtt = Mqtt::connect(&platform).await?;
    let rule = platform.create_rule(json!({"metric": "pressure", "comparison": "<", "value": 1.5})).await?;
    let id = rule["id"].as_str().unwrap_or_default().to_owned();
    mqtt.reading("p-1", "pressure", 1.0, base()).await?;
    let (_, fired) = mqtt.next_alert().await?;
    assert_eq!(fired["state"], "firing");

    // A new message template keeps the alert firing; a new threshold resolves it.
    let renamed = json!({"metric": "pressure", "comparison": "<", "value": 1.5, "message": "{device} low: {value}"});
    let updated = http("PUT", &platform.url(&format!("/api/v1/rules/{id}")), None, Some(&renamed)).await?;
    assert_eq!(updated.status, 200, "{}", String::from_utf8_lossy(&updated.body));
    assert_eq!(updated.json()["message"], "{device} low: {value}");
    assert_eq!(platform.alert_rows("p-1").await?[0].0, "firing");
    let stricter = json!({"metric": "pressure", "comparison": "<", "value": 0.5});
    let updated = http("PUT", &platform.url(&format!("/api/v1/rules/{id}")), None, Some(&stricter)).await?;
    assert_eq!(updated.status, 200);
    assert_eq!(platform.alert_rows("p-1").await?[0].0, "resolved");

    let deleted = http("DELETE", &platform.url(&format!("/api/v1/rules/{id}")), None, None).await?;
    assert_eq!(deleted.status, 204);
    http("GET", &platform.url(&format!("/api/v1/rules/{id}")), None, None).await?.expect_error(404);
    // The history outlives the rule.
    let alerts = http("GET", &platform.url("/api/v1/alerts?device=p-1"), None, None).await?.json();
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    assert!(alerts[0]["ruleId"].is_null());
    platform.wait_rules(0).await?;
    Ok(())
}

/// A reading stamped far in the future is outside the reading-time window: the engine skips it (as the ingester
/// dead-letters it), so it neither fires nor moves the device's track beyond every later reading.
#[tokio::test]
async fn a_far_future_reading_is_ignored() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut mqtt = Mqtt::connect(&platform).await?;
    platform.create_rule(json!({"name": "hot", "metric": "temperature", "comparison": ">", "value": 30})).await?;
    let far = DateTime::parse_from_rfc3339("9999-01-01T00:00:00Z")?.with_timezone(&Utc);
    mqtt.reading("r-future", "temperature", 40.0, far).await?;
    let t0 = base();
    for (second, value) in [(0, 25.0), (1, 31.0)] {
        mqtt.reading("r-future", "temperature", value, at(t0, second)).await?;
    }
    let (_, fired) = mqtt.next_alert().await?;
    assert_eq!(fired["value"], 31.0, "the far-future reading fired or froze the track: {fired}");
    assert_eq!(fired["ts"], at(t0, 1).to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    Ok(())
}

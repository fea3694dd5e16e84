//! [`RulesService`]: the one implementation of every rule and alert operation (PostgreSQL); both faces call it.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::RulesError;
use crate::model::{Alert, AlertFilter, AlertState, DEFAULT_LIMIT, MAX_LIMIT, Rule, RuleDefinition, RuleInput};

/// Rules and alerts over one database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RulesService {
    pool: PgPool,
}

const RULE_COLUMNS: &str = "id, name, metric, comparison, threshold, for_ms, device_id, tags, severity, message, enabled, created_at, updated_at";
const ALERT_COLUMNS: &str =
    "id, rule_id, rule_name, device_id, metric, severity, state, value, threshold, message, fired_at, resolved_at";

impl RulesService {
    pub fn new(pool: PgPool) -> Self {
        RulesService { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn create_rule(&self, input: RuleInput) -> Result<Rule, RulesError> {
        let definition = RuleDefinition::try_from(input)?;
        let sql = format!(
            "insert into rules (id, name, metric, comparison, threshold, for_ms, device_id, tags, severity, message, enabled)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) returning {RULE_COLUMNS}"
        );
        let row = bind_definition(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(Uuid::new_v4()), &definition)
            .fetch_one(&self.pool)
            .await?;
        let rule = rule_from_row(&row)?;
        tracing::info!(rule = %rule.id, name = %rule.definition.name, "rule created");
        Ok(rule)
    }

    pub async fn get_rule(&self, id: &str) -> Result<Rule, RulesError> {
        let uuid = parse_id(id)?;
        let sql = format!("select {RULE_COLUMNS} from rules where id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(uuid).fetch_optional(&self.pool).await?;
        row.map(|row| rule_from_row(&row)).transpose()?.ok_or_else(|| RulesError::RuleNotFound(id.to_owned()))
    }

    /// Every rule, by name; the engine uses `enabled_only`.
    pub async fn list_rules(&self, enabled_only: bool) -> Result<Vec<Rule>, RulesError> {
        let sql = format!("select {RULE_COLUMNS} from rules where enabled or not $1 order by name, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(enabled_only).fetch_all(&self.pool).await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Replaces a rule's definition. When what decides firing changes (or the rule is disabled), its firing
    /// alerts are resolved in the same transaction: they were raised under a condition that no longer exists.
    pub async fn update_rule(&self, id: &str, input: RuleInput) -> Result<Rule, RulesError> {
        let uuid = parse_id(id)?;
        let definition = RuleDefinition::try_from(input)?;
        let mut tx = self.pool.begin().await?;
        let sql = format!("select {RULE_COLUMNS} from rules where id = $1 for update");
        let old = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(uuid).fetch_optional(&mut *tx).await?;
        let old =
            old.map(|row| rule_from_row(&row)).transpose()?.ok_or_else(|| RulesError::RuleNotFound(id.to_owned()))?;
        let sql = format!(
            "update rules set name = $2, metric = $3, comparison = $4, threshold = $5, for_ms = $6, device_id = $7,
                 tags = $8, severity = $9, message = $10, enabled = $11, updated_at = now()
             where id = $1 returning {RULE_COLUMNS}"
        );
        let row =
            bind_definition(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(uuid), &definition).fetch_one(&mut *tx).await?;
        if !old.definition.same_condition(&definition) {
            let resolved = resolve_rule_alerts(&mut tx, uuid).await?;
            if resolved > 0 {
                tracing::info!(rule = %uuid, resolved, "rule changed: its firing alerts are resolved");
            }
        }
        tx.commit().await?;
        rule_from_row(&row)
    }

    /// Deletes a rule; its firing alerts are resolved and its alert history is kept.
    pub async fn delete_rule(&self, id: &str) -> Result<(), RulesError> {
        let uuid = parse_id(id)?;
        let mut tx = self.pool.begin().await?;
        resolve_rule_alerts(&mut tx, uuid).await?;
        let deleted = sqlx::query("delete from rules where id = $1").bind(uuid).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Err(RulesError::RuleNotFound(id.to_owned()));
        }
        tx.commit().await?;
        tracing::info!(rule = %uuid, "rule deleted");
        Ok(())
    }

    /// Alerts, newest first.
    pub async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<Alert>, RulesError> {
        let limit = match filter.limit {
            0 => DEFAULT_LIMIT,
            limit if limit <= MAX_LIMIT => limit,
            limit => {
                return Err(RulesError::InvalidArgument(format!("limit {limit} is above the maximum of {MAX_LIMIT}")));
            }
        };
        if let Some(device) = &filter.device_id {
            ferrite_core::DeviceId::new(device.as_str()).map_err(|err| RulesError::InvalidArgument(err.to_string()))?;
        }
        let sql = format!(
            "select {ALERT_COLUMNS} from alerts
             where ($1::text is null or state = $1) and ($2::text is null or device_id = $2)
             order by fired_at desc, id limit $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.state.map(AlertState::as_str))
            .bind(filter.device_id.as_deref())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Firing alerts of enabled rules, as `(alert, rule, device)`: the engine's state after a restart.
    pub(crate) async fn firing(&self) -> Result<Vec<(Uuid, Uuid, String)>, RulesError> {
        let rows = sqlx::query(
            "select a.id, a.rule_id, a.device_id from alerts a join rules r on r.id = a.rule_id
             where a.state = 'firing' and r.enabled",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
    }

    /// Stores a new firing alert; `Err(id)` when one is firing already for this rule and device (fired by another
    /// engine, or before a restart), with that alert's id (nil if it was resolved in between).
    pub(crate) async fn insert_alert(&self, alert: &Alert) -> Result<Result<(), Uuid>, RulesError> {
        let inserted = sqlx::query(
            "insert into alerts (id, rule_id, rule_name, device_id, metric, severity, state, value, threshold, message, fired_at)
             values ($1, $2, $3, $4, $5, $6, 'firing', $7, $8, $9, $10)
             on conflict (rule_id, device_id) where state = 'firing' do nothing",
        )
        .bind(alert.id)
        .bind(alert.rule_id)
        .bind(&alert.rule_name)
        .bind(&alert.device_id)
        .bind(&alert.metric)
        .bind(&alert.severity)
        .bind(alert.value)
        .bind(alert.threshold)
        .bind(&alert.message)
        .bind(alert.fired_at)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Ok(()));
        }
        let existing: Option<Uuid> =
            sqlx::query_scalar("select id from alerts where rule_id = $1 and device_id = $2 and state = 'firing'")
                .bind(alert.rule_id)
                .bind(&alert.device_id)
                .fetch_optional(&self.pool)
                .await?;
        // Resolved between the two statements: the next reading that holds fires it anew.
        Ok(Err(existing.unwrap_or(Uuid::nil())))
    }

    /// Resolves a firing alert; `None` when it is not firing any more (resolved elsewhere).
    pub(crate) async fn resolve_alert(
        &self,
        id: Uuid,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Alert>, RulesError> {
        let sql = format!(
            "update alerts set state = 'resolved', resolved_at = greatest($2, fired_at)
             where id = $1 and state = 'firing' returning {ALERT_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(at).fetch_optional(&self.pool).await?;
        row.map(|row| alert_from_row(&row)).transpose()
    }

    /// A device's tags (none for a device the registry does not know).
    pub(crate) async fn device_tags(&self, device: &str) -> Result<Vec<String>, RulesError> {
        let tags: Option<Vec<String>> = sqlx::query_scalar("select tags from devices where id = $1")
            .bind(device)
            .fetch_optional(&self.pool)
            .await?;
        Ok(tags.unwrap_or_default())
    }
}

async fn resolve_rule_alerts(tx: &mut sqlx::PgConnection, rule: Uuid) -> Result<u64, RulesError> {
    let done = sqlx::query("update alerts set state = 'resolved', resolved_at = greatest(now(), fired_at) where rule_id = $1 and state = 'firing'")
        .bind(rule)
        .execute(tx)
        .await?;
    Ok(done.rows_affected())
}

fn parse_id(id: &str) -> Result<Uuid, RulesError> {
    Uuid::parse_str(id.trim())
        .map_err(|_| RulesError::InvalidArgument(format!("invalid rule id {id:?}: expected a UUID")))
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds $2.. in the column order of the insert and update statements.
fn bind_definition<'q>(query: Query<'q>, definition: &'q RuleDefinition) -> Query<'q> {
    query
        .bind(&definition.name)
        .bind(&definition.metric)
        .bind(definition.comparison.as_str())
        .bind(definition.threshold)
        // At most a week (validated), so the milliseconds fit easily.
        .bind(i64::try_from(definition.for_duration.as_millis()).unwrap_or(i64::MAX))
        .bind(definition.device_id.as_deref())
        .bind(&definition.tags)
        .bind(definition.severity.as_str())
        .bind(&definition.message)
        .bind(definition.enabled)
}

fn rule_from_row(row: &PgRow) -> Result<Rule, RulesError> {
    let comparison: String = row.try_get("comparison")?;
    let severity: String = row.try_get("severity")?;
    let for_ms: i64 = row.try_get("for_ms")?;
    Ok(Rule {
        id: row.try_get("id")?,
        definition: RuleDefinition {
            name: row.try_get("name")?,
            metric: row.try_get("metric")?,
            // The table's checks admit only values these parse.
            comparison: comparison.parse()?,
            threshold: row.try_get("threshold")?,
            for_duration: Duration::from_millis(u64::try_from(for_ms).unwrap_or(0)),
            device_id: row.try_get("device_id")?,
            tags: row.try_get("tags")?,
            severity: severity.parse()?,
            message: row.try_get("message")?,
            enabled: row.try_get("enabled")?,
        },
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn alert_from_row(row: &PgRow) -> Result<Alert, RulesError> {
    let state: String = row.try_get("state")?;
    Ok(Alert {
        id: row.try_get("id")?,
        rule_id: row.try_get("rule_id")?,
        rule_name: row.try_get("rule_name")?,
        device_id: row.try_get("device_id")?,
        metric: row.try_get("metric")?,
        severity: row.try_get("severity")?,
        state: state.parse()?,
        value: row.try_get("value")?,
        threshold: row.try_get("threshold")?,
        message: row.try_get("message")?,
        fired_at: row.try_get("fired_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

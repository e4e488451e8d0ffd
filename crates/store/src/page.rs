//! The one shape of every list query: keyset pagination, newest first.

use crate::error::db_err;
use gathering_domain::{Page, PageRequest, RepoError};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Runs `sql` — which must end in `ORDER BY <id> DESC LIMIT $n` with `page.fetch_limit()` bound
/// as `$n` and `page.cursor` bound as its `id < $k` cursor — and builds the page.
pub async fn query_page<T>(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    page: PageRequest,
    from_row: impl Fn(&Row) -> Result<T, RepoError>,
    id: impl Fn(&T) -> Uuid,
) -> Result<Page<T>, RepoError> {
    let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
    let rows = client.query(&stmt, params).await.map_err(db_err)?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_rows(items, page, id))
}

//! Taking batches out of the outbox: once the server has answered for
//! them (`forward`), or when they become a dead letter (`dead_letters`).

use medledger_storage::sqlx;

/// Deletes collector batches `first..=last` (readings and card
/// signatures) and the refused readings `refused` from the outbox, in
/// `tx`.
pub(crate) async fn take_out(
    tx: &mut sqlx::AnyConnection,
    (first, last): (i64, i64),
    refused: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    for table in ["collector_outbox", "collector_outbox_cards"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE batch >= $1 AND batch <= $2"
        ))
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
    }
    for hash in refused {
        sqlx::query("DELETE FROM collector_refused WHERE hash = $1")
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

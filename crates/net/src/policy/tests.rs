//! Policy decisions, table by table.

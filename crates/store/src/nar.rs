//! NAR rendering and ingestion (to be filled).

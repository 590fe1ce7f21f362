//! Step 0 and 7 of the flow: where attempts come from and where decisions go.
//! Today: the replay file source and JSON-lines sink ([`replay`]) and the
//! traffic generator ([`generate`]).

pub mod generate;
pub mod replay;

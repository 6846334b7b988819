//! pagecrawl's integration tests: one binary, the real `pagecrawl`
//! executable, a fixture HTTP server on 127.0.0.1, and real sled state in
//! temporary folders. Each module pins one guarantee or command.

mod harness;

mod cli;
mod control;
mod crash;
mod crawl;
mod daemon;
mod damage;
mod detail;
mod errors;
mod faults;
mod follow;
mod hostile;
mod https;
mod metrics;
mod open_range;
mod power_loss;
mod properties;
mod reports;
mod store;
mod ux;

//! Berth's benchmarks: a real origin (`docker-registry`), the peers a platform team would run
//! instead (nginx `proxy_cache`, Varnish, the distribution registry in proxy mode) and the Berth
//! edge, started side by side and measured interleaved in one run.

pub mod ceiling;
pub mod cold_range;
pub mod compare;
pub mod fleet_page;
pub mod index_bench;
pub mod ingest;
pub mod load;
pub mod peers;
pub mod procstat;
pub mod propagation;
pub mod push;
pub mod raw;
pub mod region;
pub mod report;
pub mod secure;
pub mod zipf;

//! The protocol shared by the example order service and its client, and a tiny argument
//! helper. The examples show that application code never names a transport: the endpoints come
//! from a config file (`examples/config/*.toml`), the environment or `--endpoint orders=...`.
//!
//! The service answers [`Request`]s with [`Reply`]s (request/reply on the endpoint `orders`)
//! and publishes a [`Price`] on the topic `price.ITEM` whenever a price changes
//! (publish/subscribe on the endpoint `prices`).

use serde::{Deserialize, Serialize};

/// What a client asks the order service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The price of `qty` units of `item`.
    Quote {
        /// The item's name.
        item: String,
        /// How many units.
        qty: u32,
    },
    /// Place an order; the service answers with an order id.
    Place {
        /// The item's name.
        item: String,
        /// How many units.
        qty: u32,
    },
}

/// What the order service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The total price in cents.
    Quote {
        /// Total in cents.
        cents: u64,
    },
    /// The order was placed.
    Placed {
        /// The new order's id.
        id: u64,
    },
    /// The request could not be served.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A price update, published on the topic `price.ITEM`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// The item's name.
    pub item: String,
    /// The unit price in cents.
    pub cents: u64,
}

/// The items the service sells.
pub const ITEMS: [&str; 3] = ["bolt", "nut", "washer"];

/// The unit price of an item in cents, if the service sells it.
pub fn unit_price(item: &str) -> Option<u64> {
    match item {
        "bolt" => Some(25),
        "nut" => Some(10),
        "washer" => Some(5),
        _ => None,
    }
}

/// Command-line options shared by the examples: `--config FILE` and repeated
/// `--endpoint NAME=ENDPOINT`; anything else is returned as a free argument.
#[derive(Debug, Default)]
pub struct Args {
    /// The config file, if given.
    pub config: Option<String>,
    /// `NAME=ENDPOINT` overrides.
    pub endpoints: Vec<String>,
    /// Other arguments, in order.
    pub free: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`.
    pub fn parse() -> Result<Args, String> {
        let mut out = Args::default();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            match a.as_str() {
                "--config" => out.config = Some(it.next().ok_or("--config needs a file")?),
                "--endpoint" => out
                    .endpoints
                    .push(it.next().ok_or("--endpoint needs NAME=ENDPOINT")?),
                _ => out.free.push(a),
            }
        }
        Ok(out)
    }

    /// Loads the config file (if any) and applies the overrides.
    pub fn config(&self) -> Result<ductwork::Config, String> {
        let mut cfg = match &self.config {
            Some(path) => ductwork::Config::load(path).map_err(|e| e.to_string())?,
            None => ductwork::Config::new(),
        };
        cfg.apply_args(&self.endpoints).map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

//! Where configuration values come from besides the TOML file. Tests fill a [`MapSource`]
//! instead of touching the process environment.

use std::collections::HashMap;

/// A flat source of `BELLHOP_*` settings.
pub trait Source {
    /// The value of `name`, or `None` when it is not set. Empty values count as set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct EnvSource;

impl Source for EnvSource {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed map, for tests and for tools that build a config in code.
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub HashMap<String, String>);

impl MapSource {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
}

impl Source for MapSource {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

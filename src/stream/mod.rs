//! The streaming core: the registry of generations ([`Hub`]) and their seq-numbered event logs ([`EventLog`]).
//! It knows neither the database nor HTTP: the chat service runs generations on it, the wire encoders read it.

pub mod hub;
pub mod log;

pub use self::hub::{Generation, Hub, ShuttingDown, SubscriberGuard, UnattendedPolicy};
pub use self::log::{
    EventLog, EventLogs, GenerationMeta, LogBounds, LogFull, MemoryLog, MemoryLogs, StopSignal,
};

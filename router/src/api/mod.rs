//! Wire types (DTOs) of the HTTP API: field names, defaults and JSON shapes only, no logic.
//! TGI's types follow text-generation-inference so its clients (`text-generation`,
//! `huggingface_hub`) work unmodified; OpenAI's types will live beside them.

pub mod chat_tokenize;
pub mod error;
pub mod generate;
pub mod grammar;
pub mod info;
pub mod response;
pub mod tokenize;

use serde::{Deserialize, Deserializer};

/// Treats an explicit JSON `null` like a missing field (clients send `"stop": null`).
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

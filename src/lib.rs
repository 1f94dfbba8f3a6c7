//! ductwork facade.

//! Masking of sensitive data in chat text (card numbers and the like). Work in progress.

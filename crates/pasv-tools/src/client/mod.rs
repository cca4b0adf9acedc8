//! The FTP client library behind `pasv` (under construction).

//! FTP control-connection protocol (under construction).

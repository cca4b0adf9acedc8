#!/bin/sh
# Installs pasvd and pasv with their man pages, shell completions, systemd unit, sysusers and
# tmpfiles entries and the example configuration, for a distribution package (DESTDIR) or a
# local install. Run from the repository after building:
#
#   cargo build --release --locked
#   cargo xtask dist --out target/dist
#   DESTDIR=/tmp/pkg PREFIX=/usr packaging/install.sh
#
# Variables (defaults in brackets): DESTDIR [], PREFIX [/usr/local], SYSCONFDIR [/etc],
# UNITDIR [$PREFIX/lib/systemd/system], BIN_DIR [target/release], DIST_DIR [target/dist].
# The configuration file is not replaced when one is already installed.
set -eu

cd "$(dirname "$0")/.."
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
BIN_DIR=${BIN_DIR:-target/release}
DIST_DIR=${DIST_DIR:-target/dist}

for f in "$BIN_DIR/pasvd" "$BIN_DIR/pasv" "$DIST_DIR/man/pasvd.1" "$DIST_DIR/completions/pasvd.bash"; do
    if [ ! -f "$f" ]; then
        echo "install.sh: $f is missing: build first (cargo build --release --locked;" \
            "cargo xtask dist --out $DIST_DIR)" >&2
        exit 1
    fi
done

dest=$DESTDIR$PREFIX
install -d "$dest/bin" "$dest/share/man/man1" \
    "$dest/share/bash-completion/completions" "$dest/share/zsh/site-functions" \
    "$dest/share/fish/vendor_completions.d" "$dest/lib/sysusers.d" "$dest/lib/tmpfiles.d" \
    "$dest/share/doc/pasvd" "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/pasvd"

install -m 755 "$BIN_DIR/pasvd" "$BIN_DIR/pasv" "$dest/bin/"
install -m 644 "$DIST_DIR"/man/*.1 "$dest/share/man/man1/"
for bin in pasvd pasv; do
    install -m 644 "$DIST_DIR/completions/$bin.bash" "$dest/share/bash-completion/completions/$bin"
    install -m 644 "$DIST_DIR/completions/_$bin" "$dest/share/zsh/site-functions/_$bin"
    install -m 644 "$DIST_DIR/completions/$bin.fish" "$dest/share/fish/vendor_completions.d/$bin.fish"
done

# The unit names the binary where it is installed.
sed "s|/usr/local/bin/pasvd|$PREFIX/bin/pasvd|g; s|/etc/pasvd/|$SYSCONFDIR/pasvd/|g" \
    packaging/pasvd.service >"$DESTDIR$UNITDIR/pasvd.service"
chmod 644 "$DESTDIR$UNITDIR/pasvd.service"
install -m 644 packaging/pasvd.sysusers "$dest/lib/sysusers.d/pasvd.conf"
install -m 644 packaging/pasvd.tmpfiles "$dest/lib/tmpfiles.d/pasvd.conf"
if [ ! -e "$DESTDIR$SYSCONFDIR/pasvd/pasvd.toml" ]; then
    install -m 644 packaging/pasvd.toml "$DESTDIR$SYSCONFDIR/pasvd/pasvd.toml"
fi
install -m 644 README.md docs/DEPLOYMENT.md docs/CLIENT.md "$dest/share/doc/pasvd/"

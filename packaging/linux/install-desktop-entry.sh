#!/usr/bin/env sh
# Put Finetune Studio in the desktop's application menu, for this user only.
# Copies the .desktop entry and the icon PNGs into ~/.local/share (XDG_DATA_HOME); the
# `studio` command itself comes from `pipx install .`, `pip install .` or the built app folder
# on PATH. Undo with: install-desktop-entry.sh --uninstall
set -eu
here=$(cd "$(dirname "$0")" && pwd)
icons="$here/../../resources/icons"
data="${XDG_DATA_HOME:-$HOME/.local/share}"
sizes="16 32 48 64 128 256 512"

refresh() {  # the menus and icon caches, where the tools exist; harmless where they do not
    if command -v update-desktop-database >/dev/null 2>&1; then
        update-desktop-database "$data/applications" || true
    fi
    if command -v gtk-update-icon-cache >/dev/null 2>&1; then
        gtk-update-icon-cache -q -t "$data/icons/hicolor" || true
    fi
}

if [ "${1:-}" = "--uninstall" ]; then
    rm -f "$data/applications/finetune-studio.desktop"
    for size in $sizes; do
        rm -f "$data/icons/hicolor/${size}x${size}/apps/finetune-studio.png"
    done
    rm -f "$data/icons/hicolor/scalable/apps/finetune-studio.svg"
    refresh
    echo "removed the Finetune Studio menu entry and icons from $data"
    exit 0
fi

if ! command -v studio >/dev/null 2>&1; then
    echo "note: no 'studio' command on PATH yet; the menu entry runs 'studio', so install it" \
         "with 'pipx install .' (or put the built app folder on PATH) before using it." >&2
fi
mkdir -p "$data/applications"
cp "$here/finetune-studio.desktop" "$data/applications/finetune-studio.desktop"
for size in $sizes; do
    apps="$data/icons/hicolor/${size}x${size}/apps"
    mkdir -p "$apps"
    cp "$icons/finetune-studio-$size.png" "$apps/finetune-studio.png"
done
mkdir -p "$data/icons/hicolor/scalable/apps"
cp "$icons/finetune-studio.svg" "$data/icons/hicolor/scalable/apps/finetune-studio.svg"
refresh
echo "installed the Finetune Studio menu entry and icons into $data"

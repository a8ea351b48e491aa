// Package ui holds the admin API's status page: one HTML page, a small
// script and a stylesheet, embedded in the binary so the page works on a
// host with no network beyond the admin port (no CDN, no web fonts).
//
// The files are served by package admin; ui only knows what they are. Each
// asset carries a strong ETag taken from its content, so a browser can
// revalidate cheaply and picks up new assets after an upgrade without any
// versioned file names.
package ui

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"path"
)

//go:embed index.html app.js style.css
var files embed.FS

// Asset is one embedded file, ready to serve.
type Asset struct {
	Name        string
	Body        []byte
	ContentType string
	// ETag is a quoted strong entity tag derived from Body.
	ETag string
}

// contentTypes lists the types of the embedded files by extension, set here
// rather than from the host's mime tables so every build serves the same.
var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

var assets = load()

func load() map[string]Asset {
	out := map[string]Asset{}
	// The embed directive above names every file, so a missing one fails
	// the build; reading them cannot fail at run time.
	entries, _ := fs.ReadDir(files, ".")
	for _, e := range entries {
		b, _ := files.ReadFile(e.Name())
		sum := sha256.Sum256(b)
		out[e.Name()] = Asset{
			Name:        e.Name(),
			Body:        b,
			ContentType: contentTypes[path.Ext(e.Name())],
			ETag:        `"` + hex.EncodeToString(sum[:12]) + `"`,
		}
	}
	return out
}

// Index is the page itself.
func Index() Asset { return assets["index.html"] }

// Lookup returns the asset named name (e.g. "app.js"), or false when there
// is none. The page is not an asset: it is served at "/" only.
func Lookup(name string) (Asset, bool) {
	a, ok := assets[name]
	if name == "index.html" {
		return Asset{}, false
	}
	return a, ok
}

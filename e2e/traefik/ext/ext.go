// Package ext stands in for Traefik's nested module github.com/traefik/traefik/dynamic/ext, which
// traefik's go.mod replaces with its own ./pkg/config/dynamic/ext. A nested module is left out of the
// parent's module zip, so a build from the Go module proxy has no such directory. Traefik v3.7 only
// embeds these two types, empty, as extension points (inline in dynamic.HTTP and dynamic.Router);
// build.sh puts this directory where the replace points.
package ext

// HTTP extends dynamic.HTTP (nothing in the open-source build).
type HTTP struct{}

// Router extends dynamic.Router (nothing in the open-source build).
type Router struct{}

// Package dns stands in for lego's providers/dns registry (the one file, zz_gen_dns_providers.go, that
// imports every DNS-01 provider) in the e2e's Traefik build. The Go module proxy reachable here lacks the
// SDK modules of about a dozen of those providers (see e2e/traefik/build.sh), so the registry cannot
// compile; Traefik calls only this function, for ACME DNS-01 challenges, which the e2e never configures.
package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName fails for every name: no DNS-01 provider is built in.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("ACME DNS-01 provider %q: DNS providers are not built into this e2e build of Traefik (e2e/traefik/build.sh)", name)
}

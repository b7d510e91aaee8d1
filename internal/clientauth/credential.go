package clientauth

import (
	"fmt"
	"strings"
)

// NewCredential returns the credential for user given one secret as
// PostgreSQL and PgBouncer store it, classified the way they do: "md5" and
// 32 lowercase hex digits is an md5 hash, "SCRAM-SHA-256$…" a SCRAM secret
// (an error if malformed), anything else a plaintext password. An empty
// secret gives a credential only Trust accepts.
func NewCredential(user, secret string) (Credential, error) {
	c := Credential{User: user}
	switch {
	case isMD5Hash(secret):
		c.MD5 = secret
	case strings.HasPrefix(secret, scramPrefix):
		if _, err := parseSCRAMSecret(secret); err != nil {
			return Credential{}, fmt.Errorf("user %q: %w", user, err)
		}
		c.SCRAM = secret
	default:
		c.Password = secret
	}
	return c, nil
}

// MapStore is a Store held in memory, keyed by user name. It must not be
// modified once in use.
type MapStore map[string]Credential

// Lookup implements Store. The returned credential's User is the key.
func (m MapStore) Lookup(user string) (Credential, bool) {
	c, ok := m[user]
	if ok {
		c.User = user
	}
	return c, ok
}

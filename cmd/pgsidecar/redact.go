package main

import (
	"log/slog"
	"maps"
	"net/url"
	"slices"

	"go.yaml.in/yaml/v3"
)

// redacted replaces every secret in printed or logged configuration.
const redacted = "xxxxx"

// String renders c as YAML with every secret replaced: upstream and database
// URL passwords (in the user info or a password= parameter) and users'
// passwords. It is what --print-config prints.
func (c Config) String() string {
	out, err := yaml.Marshal(c.redact())
	if err != nil {
		return "<unprintable config: " + err.Error() + ">"
	}
	return string(out)
}

// GoString keeps %#v from printing secrets.
func (c Config) GoString() string { return c.String() }

// LogValue logs c with secrets replaced.
func (c Config) LogValue() slog.Value {
	r := c.redact()
	return slog.GroupValue(
		slog.String("listen", r.Listen),
		slog.String("http_listen", r.HTTPListen),
		slog.String("upstream", r.Upstream),
		slog.Any("databases", r.Databases),
		slog.String("pool_mode", r.PoolMode),
		slog.Int("pool_size", r.PoolSize),
		slog.Int("min_pool_size", r.MinPoolSize),
		slog.Int("max_client_conn", r.MaxClientConn),
		slog.String("auth_method", r.AuthMethod),
		slog.String("auth_file", r.AuthFile),
		slog.Any("users", slices.Sorted(maps.Keys(r.Users))),
		slog.String("tls_client_mode", r.TLS.ClientMode),
		slog.Bool("tls_certificate", r.TLS.CertFile != ""),
		slog.String("shutdown_timeout", r.ShutdownTimeout.String()),
		slog.String("shutdown_grace", r.ShutdownGrace.String()),
		slog.Bool("cache", r.Cache.Enabled),
		slog.String("redis", r.Cache.Redis),
	)
}

// redact returns a copy of c that is safe to show.
func (c Config) redact() Config {
	r := c
	r.Upstream = redactURL(c.Upstream)
	r.Cache.Redis = redactURL(c.Cache.Redis)
	if c.Databases != nil {
		r.Databases = make(map[string]string, len(c.Databases))
		for name, u := range c.Databases {
			r.Databases[name] = redactURL(u)
		}
	}
	if c.Users != nil {
		r.Users = make(map[string]string, len(c.Users))
		for user := range c.Users {
			r.Users[user] = redacted
		}
	}
	return r
}

// redactURL hides the password of a postgres:// URL, whether in the user
// info or in a password or sslpassword query parameter. A string that does not parse is
// hidden whole: there is no telling where its secret is.
func redactURL(s string) string {
	if s == "" {
		return ""
	}
	u, err := url.Parse(s)
	if err != nil {
		return redacted
	}
	q, changed := u.Query(), false
	for _, key := range []string{"password", "sslpassword"} {
		if q.Has(key) {
			q.Set(key, redacted)
			changed = true
		}
	}
	if changed {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// Command render renders a Helm chart's templates the way `helm template` does, for the
// subset of Helm the pyusdt chart uses. Helm cannot be installed on the machines this project
// is tested on; Debian packages Go's text/template and sprig, which are what Helm renders
// with, so this is Helm's engine minus what the chart does not use:
//
//   - values: values.yaml, then each -f file merged over it (maps merged key by key, null
//     deletes a key), numbers decoded as float64 as Helm's YAML→JSON decoding does;
//   - objects: .Values, .Release (Name, Namespace, Service, IsInstall, IsUpgrade, Revision),
//     .Chart (Name, Version, AppVersion, Description, Type, APIVersion), .Template (Name,
//     BasePath); no .Capabilities, .Files or lookup;
//   - functions: sprig's text functions without env/expandenv (as Helm), plus Helm's
//     include, required, toYaml, toJson, fromYaml, fromJson and tpl;
//   - templates/_*.tpl define partials and render nothing; other files render to manifests,
//     empty output is skipped, "<no value>" becomes "" (missingkey=zero), NOTES.txt is
//     rendered apart (-notes).
//
// Usage:
//
//	render -chart helm/pyusdt [-f values.yaml]... [-release NAME] [-namespace NS]
//	       [-values-out merged.json] [-notes]
//
// The manifests go to stdout as one YAML stream with "# Source:" comments like helm's.
// Values are not validated here: -values-out writes the merged values for the
// values.schema.json check (Helm validates the merged values, too).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

// Chart is the subset of Chart.yaml that templates read as .Chart (Helm's chart.Metadata).
type Chart struct {
	APIVersion  string `yaml:"apiVersion"`
	Name        string `yaml:"name"`
	Version     string `yaml:"version"`
	AppVersion  string `yaml:"appVersion"`
	Description string `yaml:"description"`
	Type        string `yaml:"type"`
}

type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	chartDir := flag.String("chart", "", "chart directory")
	release := flag.String("release", "pyusdt", "release name")
	namespace := flag.String("namespace", "pyusdt", "release namespace")
	valuesOut := flag.String("values-out", "", "write the merged values as JSON to this file")
	notes := flag.Bool("notes", false, "render NOTES.txt instead of the manifests")
	var files fileList
	flag.Var(&files, "f", "values file merged over values.yaml (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fail(errors.New("-chart is required"))
	}
	out, err := render(*chartDir, files, *release, *namespace, *valuesOut, *notes)
	if err != nil {
		fail(err)
	}
	os.Stdout.WriteString(out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "render:", err)
	os.Exit(1)
}

func render(chartDir string, files []string, release, namespace, valuesOut string, notes bool) (string, error) {
	var chart Chart
	if err := readYAML(filepath.Join(chartDir, "Chart.yaml"), &chart); err != nil {
		return "", err
	}
	values, err := readValues(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range files {
		override, err := readValues(f)
		if err != nil {
			return "", err
		}
		values = coalesce(values, override)
	}
	if valuesOut != "" {
		j, err := json.MarshalIndent(values, "", "  ")
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(valuesOut, j, 0o644); err != nil {
			return "", err
		}
	}

	templatesDir := filepath.Join(chartDir, "templates")
	var names []string
	err = filepath.Walk(templatesDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		return "", err
	}
	sort.Strings(names)
	basePath := chart.Name + "/templates"

	root := template.New("gotpl").Option("missingkey=zero")
	root.Funcs(funcMap(root))
	tplName := map[string]string{}
	for _, p := range names {
		rel, _ := filepath.Rel(templatesDir, p)
		name := basePath + "/" + filepath.ToSlash(rel)
		tplName[p] = name
		text, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		if _, err := root.New(name).Parse(string(text)); err != nil {
			return "", fmt.Errorf("parse %s: %w", name, err)
		}
	}

	releaseObj := map[string]interface{}{
		"Name": release, "Namespace": namespace, "Service": "Helm",
		"IsInstall": true, "IsUpgrade": false, "Revision": 1,
	}
	var out strings.Builder
	for _, p := range names {
		name := tplName[p]
		base := filepath.Base(p)
		if strings.HasPrefix(base, "_") || (base == "NOTES.txt") != notes {
			continue
		}
		data := map[string]interface{}{
			"Values":   values,
			"Release":  releaseObj,
			"Chart":    chart,
			"Template": map[string]interface{}{"Name": name, "BasePath": basePath},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", fmt.Errorf("render %s: %w", name, err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(text) == "" {
			continue
		}
		if notes {
			out.WriteString(text)
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(text))
	}
	return out.String(), nil
}

// funcMap is Helm's: sprig's text functions without env/expandenv, plus Helm's own.
func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		includeDepth++
		defer func() { includeDepth-- }()
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: too deep", name)
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			return "", err
		}
		return buf.String(), nil
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		if err := t.Execute(&buf, data); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	f["toYaml"] = func(v interface{}) string {
		s, err := toYAML(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(s, "\n")
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := decodeYAML([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	return f
}

// toYAML is sigs.k8s.io/yaml.Marshal, which Helm's toYaml calls: JSON first, then YAML
// (yaml.v2, keys sorted).
func toYAML(v interface{}) (string, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return "", err
	}
	y, err := yaml.Marshal(obj)
	return string(y), err
}

func readYAML(path string, into interface{}) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readValues(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := decodeYAML(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// decodeYAML is sigs.k8s.io/yaml.Unmarshal: YAML to JSON, then encoding/json (numbers become
// float64, as in Helm's values).
func decodeYAML(b []byte, into *map[string]interface{}) error {
	var raw interface{}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		return nil
	}
	j, err := json.Marshal(jsonable(raw))
	if err != nil {
		return err
	}
	return json.Unmarshal(j, into)
}

// jsonable turns yaml.v2's map[interface{}]interface{} into JSON-encodable maps.
func jsonable(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[fmt.Sprint(k)] = jsonable(x)
		}
		return m
	case []interface{}:
		for i, x := range t {
			t[i] = jsonable(x)
		}
		return t
	default:
		return v
	}
}

// coalesce merges override into base as Helm merges -f files over the chart's values.
func coalesce(base, override map[string]interface{}) map[string]interface{} {
	for k, v := range override {
		if v == nil {
			delete(base, k)
			continue
		}
		bm, bok := base[k].(map[string]interface{})
		om, ook := v.(map[string]interface{})
		if bok && ook {
			base[k] = coalesce(bm, om)
		} else {
			base[k] = v
		}
	}
	return base
}

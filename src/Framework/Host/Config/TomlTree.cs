using Tomlyn;
using Tomlyn.Parsing;
using Tomlyn.Syntax;

namespace Vism.Host.Config;

/// <summary>A 1-based line and column in a config file.</summary>
public readonly record struct TextPos(int Line, int Column)
{
    internal static TextPos From(SourceSpan span) => new(span.Start.Line + 1, span.Start.Column + 1);
}

/// <summary>A TOML value with the position it came from. The tree is built from Tomlyn's lossless
/// syntax tree, so every key and value keeps its line and column for error messages.</summary>
public abstract class TomlNode(TextPos pos)
{
    /// <summary>Where the value starts (for a table: its header key, or its first key).</summary>
    public TextPos Pos { get; internal set; } = pos;

    /// <summary>The TOML type name used in error messages ("string", "integer", "table", ...).</summary>
    public abstract string TypeName { get; }
}

/// <summary>One key of a table: its name, where the key is written, and its value.</summary>
public sealed record TomlEntry(string Key, TextPos KeyPos, TomlNode Value);

/// <summary>A TOML table; keys keep their document order.</summary>
public sealed class TomlTable(TextPos pos) : TomlNode(pos)
{
    private readonly List<TomlEntry> _entries = [];
    private readonly Dictionary<string, TomlEntry> _byKey = new(StringComparer.Ordinal);

    public override string TypeName => "table";

    public IReadOnlyList<TomlEntry> Entries => _entries;

    public bool TryGet(string key, out TomlEntry entry) => _byKey.TryGetValue(key, out entry!);

    internal void Add(TomlEntry entry)
    {
        // The syntax parser's semantic validation has already rejected duplicate keys.
        if (_byKey.TryAdd(entry.Key, entry))
            _entries.Add(entry);
    }
}

/// <summary>A TOML array (including an array of tables).</summary>
public sealed class TomlArray(TextPos pos) : TomlNode(pos)
{
    public List<TomlNode> Items { get; } = [];
    public override string TypeName => "array";
}

/// <summary>A TOML scalar: string, integer (long), float (double), boolean or date-time.</summary>
public sealed class TomlScalar(TextPos pos, object value) : TomlNode(pos)
{
    public object Value { get; } = value;

    public override string TypeName => Value switch
    {
        string => "string",
        long => "integer",
        double => "float",
        bool => "boolean",
        _ => "date-time",
    };
}

/// <summary>Parses TOML text into a positioned <see cref="TomlTable"/>.</summary>
public static class TomlTree
{
    /// <summary>Parses <paramref name="text"/>. Syntax errors and TOML semantic errors (duplicate
    /// keys, redefined tables) are all reported through <paramref name="errors"/>; the tree is
    /// returned only when there are none.</summary>
    public static TomlTable? Parse(string text, string file, ConfigErrors errors)
    {
        DocumentSyntax doc;
        try
        {
            doc = SyntaxParser.Parse(text, file, validate: true);
        }
        catch (TomlException ex)
        {
            errors.Add(new TextPos(Math.Max(1, ex.Line ?? 1), Math.Max(1, ex.Column ?? 1)), "(toml)", ex.Message);
            return null;
        }
        catch (ArgumentException ex)
        {
            // Tomlyn 2.10.2's lexer throws instead of reporting some malformed input, for example a
            // string whose escape is cut by the end of the file ('"\'; found by fuzzing, docs/fuzzing.md).
            errors.Add(EndOf(text), "(toml)", $"not valid TOML (an unfinished string or escape sequence?); the TOML parser failed: {ex.Message}");
            return null;
        }
        if (doc.HasErrors)
        {
            // One syntax mistake (a missing quote) makes the parser report every line after it: only
            // the first error is certain, so it is the one reported.
            List<DiagnosticMessage> found = doc.Diagnostics.Where(d => d.Kind == DiagnosticMessageKind.Error).ToList();
            DiagnosticMessage first = found.MinBy(d => d.Span.Start.Offset)!;
            string more = found.Count > 1 ? $" (the parser stopped making sense of the file here; fix this and validate again)" : "";
            errors.Add(TextPos.From(first.Span), KeyAt(doc, first.Span.Start.Offset) ?? "(toml)", first.Message + more);
            return null;
        }

        var root = new TomlTable(new TextPos(1, 1));
        foreach (KeyValueSyntax kv in doc.KeyValues)
            AddKeyValue(root, kv);
        foreach (TableSyntaxBase table in doc.Tables)
        {
            List<(string Name, TextPos Pos)> path = KeyParts(table.Name!);
            TomlTable parent = root;
            for (int i = 0; i < path.Count - 1; i++)
                parent = Descend(parent, path[i]);
            (string name, TextPos pos) = path[^1];
            TomlTable target;
            if (table is TableArraySyntax)
            {
                if (!parent.TryGet(name, out TomlEntry? e))
                {
                    e = new TomlEntry(name, pos, new TomlArray(pos));
                    parent.Add(e);
                }
                target = new TomlTable(pos);
                ((TomlArray)e.Value).Items.Add(target);
            }
            else
            {
                target = Descend(parent, (name, pos));
                target.Pos = pos;
            }
            foreach (KeyValueSyntax kv in table.Items)
                AddKeyValue(target, kv);
        }
        return root;
    }

    /// <summary>Line and column just after the last character of <paramref name="text"/>.</summary>
    private static TextPos EndOf(string text)
    {
        int lastBreak = text.LastIndexOf('\n');
        return new TextPos(1 + text.Count(c => c == '\n'), text.Length - lastBreak);
    }

    /// <summary>The dotted name of the innermost key whose line holds <paramref name="offset"/>, for syntax errors.</summary>
    private static string? KeyAt(DocumentSyntax doc, int offset)
    {
        string? found = null;
        string prefix = "";
        void Visit(IEnumerable<KeyValueSyntax> items)
        {
            foreach (KeyValueSyntax kv in items)
                if (kv?.Key is not null && kv.Span.Start.Offset <= offset && offset <= kv.Span.End.Offset + 1)
                    found = prefix + string.Join('.', KeyParts(kv.Key).Select(p => p.Name));
        }
        Visit(doc.KeyValues);
        foreach (TableSyntaxBase? t in doc.Tables)
        {
            if (t?.Name is null) continue;
            prefix = string.Join('.', KeyParts(t.Name).Select(p => p.Name)) + ".";
            Visit(t.Items);
        }
        return found;
    }

    private static TomlTable Descend(TomlTable parent, (string Name, TextPos Pos) part)
    {
        if (parent.TryGet(part.Name, out TomlEntry? e))
        {
            return e.Value switch
            {
                TomlTable t => t,
                TomlArray { Items.Count: > 0 } a when a.Items[^1] is TomlTable last => last,
                _ => throw new InvalidOperationException($"TOML validation let '{part.Name}' through as a non-table"),
            };
        }
        var table = new TomlTable(part.Pos);
        parent.Add(new TomlEntry(part.Name, part.Pos, table));
        return table;
    }

    private static void AddKeyValue(TomlTable table, KeyValueSyntax kv)
    {
        List<(string Name, TextPos Pos)> path = KeyParts(kv.Key!);
        for (int i = 0; i < path.Count - 1; i++)
            table = Descend(table, path[i]);
        table.Add(new TomlEntry(path[^1].Name, path[^1].Pos, Convert(kv.Value!)));
    }

    private static TomlNode Convert(ValueSyntax value)
    {
        TextPos pos = TextPos.From(value.Span);
        switch (value)
        {
            case StringValueSyntax s: return new TomlScalar(pos, s.Value ?? "");
            case IntegerValueSyntax i: return new TomlScalar(pos, i.Value);
            case FloatValueSyntax f: return new TomlScalar(pos, f.Value);
            case BooleanValueSyntax b: return new TomlScalar(pos, b.Value);
            case DateTimeValueSyntax d: return new TomlScalar(pos, d.Value);
            case ArraySyntax a:
                var array = new TomlArray(pos);
                foreach (ArrayItemSyntax item in a.Items)
                    if (item.Value is not null) array.Items.Add(Convert(item.Value));
                return array;
            case InlineTableSyntax t:
                var table = new TomlTable(pos);
                foreach (InlineTableItemSyntax item in t.Items)
                    if (item.KeyValue is not null) AddKeyValue(table, item.KeyValue);
                return table;
            default:
                throw new InvalidOperationException($"unexpected TOML value syntax {value.GetType().Name}");
        }
    }

    // A tree with syntax errors may lack any part of a key; KeyAt reads such trees, so nothing here may assume one.
    private static List<(string Name, TextPos Pos)> KeyParts(KeySyntax key)
    {
        var parts = new List<(string, TextPos)> { Part(key.Key) };
        foreach (DottedKeyItemSyntax? dotted in key.DotKeys)
            parts.Add(Part(dotted?.Key));
        return parts;
    }

    private static (string, TextPos) Part(BareKeyOrStringValueSyntax? key) => key switch
    {
        BareKeySyntax bare => (bare.Key?.Text ?? "?", TextPos.From(bare.Span)),
        StringValueSyntax s => (s.Value ?? "?", TextPos.From(s.Span)),
        null => ("?", new TextPos(1, 1)),
        _ => ("?", TextPos.From(key.Span)),
    };
}

using System.ComponentModel;
using System.Globalization;
using System.Reflection;
using System.Text.Json;

namespace Vism.Host.Config;

/// <summary>One bindable option: a public settable property of an options class and its TOML key.</summary>
/// <param name="Key">The kebab-case TOML key.</param>
/// <param name="Property">The property it binds to.</param>
/// <param name="TypeName">The type as shown to users ("size", "string", "one of: a | b", ...).</param>
/// <param name="Description">From <see cref="DescriptionAttribute"/>; null when the plugin gave none.</param>
/// <param name="Default">The value a fresh options object has, formatted as TOML; null when unset.</param>
/// <param name="Converter">Reads the value instead of <see cref="TomlValues.TryConvert"/> when the property has a <see cref="TomlConverterAttribute"/>.</param>
public sealed record OptionInfo(string Key, PropertyInfo Property, string TypeName, string? Description, string? Default, ITomlConverter? Converter = null)
{
    /// <summary>Converts a TOML value for this option.</summary>
    public bool TryConvert(TomlNode node, out object? value, out string? error) =>
        Converter is not null
            ? Converter.TryConvert(node, out value, out error)
            : TomlValues.TryConvert(node, Property.PropertyType, out value, out error);
}

/// <summary>Overrides the kebab-case key derived from the property name (<c>StateDirectory</c> as <c>state-dir</c>).</summary>
/// <param name="key">The TOML key.</param>
[AttributeUsage(AttributeTargets.Property)]
public sealed class ConfigKeyAttribute(string key) : Attribute
{
    /// <summary>The TOML key.</summary>
    public string Key { get; } = key;
}

/// <summary>Reads a TOML value of a shape the built-in conversions do not know (e.g. an integer or a hex string).</summary>
public interface ITomlConverter
{
    /// <summary>The type as shown to users.</summary>
    string TypeName { get; }

    /// <summary>Converts <paramref name="node"/>, or explains why it cannot.</summary>
    bool TryConvert(TomlNode node, out object? value, out string? error);
}

/// <summary>Binds the property through an <see cref="ITomlConverter"/> (a public parameterless class).</summary>
/// <param name="converter">The converter type.</param>
[AttributeUsage(AttributeTargets.Property)]
public sealed class TomlConverterAttribute(Type converter) : Attribute
{
    /// <summary>The converter type.</summary>
    public Type Converter { get; } = converter;
}

/// <summary>
/// The TOML face of an options class: every public settable property becomes a kebab-case key
/// (<c>SocketPath</c> -> <c>socket-path</c>). Built once per type. Supported property types:
/// string, bool, the integer types, ulong (also accepts size strings such as "2MiB"), double,
/// enums (kebab-case names), TimeSpan ("50us", "500ms", "5s", "2m", "1h"), arrays/lists of those, and
/// nullable versions. A plugin with any other property type is refused at load time.
/// </summary>
public sealed class OptionsSchema
{
    private readonly Dictionary<string, OptionInfo> _byKey;

    private OptionsSchema(Type type, List<OptionInfo> options)
    {
        Type = type;
        Options = options;
        _byKey = options.ToDictionary(o => o.Key, StringComparer.Ordinal);
    }

    public Type Type { get; }

    public IReadOnlyList<OptionInfo> Options { get; }

    public bool TryGet(string key, out OptionInfo option) => _byKey.TryGetValue(key, out option!);

    /// <summary>Builds the schema of <paramref name="type"/>, or explains why it cannot be bound.</summary>
    public static OptionsSchema Create(Type type, IReadOnlySet<string> reservedKeys)
    {
        if (type.GetConstructor(Type.EmptyTypes) is null)
            throw new InvalidOperationException($"options type {type.FullName} has no public parameterless constructor");
        object fresh = Activator.CreateInstance(type)!;
        var options = new List<OptionInfo>();
        foreach (PropertyInfo p in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (p.SetMethod is not { IsPublic: true } || p.GetIndexParameters().Length > 0) continue;
            string key = p.GetCustomAttribute<ConfigKeyAttribute>()?.Key ?? JsonNamingPolicy.KebabCaseLower.ConvertName(p.Name);
            if (reservedKeys.Contains(key))
                throw new InvalidOperationException($"option {type.Name}.{p.Name} uses the reserved key '{key}'");
            ITomlConverter? converter = p.GetCustomAttribute<TomlConverterAttribute>() is { } c
                ? (ITomlConverter)Activator.CreateInstance(c.Converter)!
                : null;
            string? typeName = converter?.TypeName ?? Describe(p.PropertyType);
            if (typeName is null)
                throw new InvalidOperationException($"option {type.Name}.{p.Name} has type {p.PropertyType.Name}, which a TOML value cannot bind to");
            string? description = p.GetCustomAttribute<DescriptionAttribute>()?.Description;
            options.Add(new OptionInfo(key, p, typeName, description, FormatValue(p.GetValue(fresh)), converter));
        }
        return new OptionsSchema(type, options);
    }

    /// <summary>Creates an options object and sets every key of <paramref name="table"/> except the
    /// reserved ones; unknown keys and values of the wrong type are reported, never ignored.</summary>
    /// <param name="table">The plugin's TOML section.</param>
    /// <param name="path">The dotted path of the section for messages, e.g. <c>device[0].transport</c>.</param>
    /// <param name="reservedKeys">Keys the host consumes itself (<c>kind</c>).</param>
    /// <param name="errors">Where problems go.</param>
    public object Bind(TomlTable table, string path, IReadOnlySet<string> reservedKeys, ConfigErrors errors) =>
        Bind(table, path, reservedKeys, errors, out _);

    /// <summary>As <see cref="Bind(TomlTable, string, IReadOnlySet{string}, ConfigErrors)"/>; <paramref name="bound"/>
    /// receives the keys whose values were set (given and of the right type), for checks that follow.</summary>
    /// <param name="listReserved">Whether an unknown-key message lists the reserved keys as known (they are keys of this section, not the host's own).</param>
    public object Bind(TomlTable table, string path, IReadOnlySet<string> reservedKeys, ConfigErrors errors, out IReadOnlySet<string> bound,
        bool listReserved = false)
    {
        var set = new HashSet<string>(StringComparer.Ordinal);
        bound = set;
        object instance = Activator.CreateInstance(Type)!;
        foreach (TomlEntry entry in table.Entries)
        {
            if (reservedKeys.Contains(entry.Key)) continue;
            string key = $"{path}.{entry.Key}";
            if (!_byKey.TryGetValue(entry.Key, out OptionInfo? option))
            {
                errors.Add(entry.KeyPos, key, UnknownKey(entry.Key, listReserved ? _byKey.Keys.Concat(reservedKeys) : _byKey.Keys));
                continue;
            }
            if (option.TryConvert(entry.Value, out object? value, out string? error))
            {
                try
                {
                    option.Property.SetValue(instance, value);
                    set.Add(entry.Key);
                }
                catch (TargetInvocationException ex)
                {
                    errors.Add(entry.KeyPos, key, ex.InnerException?.Message ?? ex.Message);
                }
            }
            else
            {
                errors.Add(entry.Value.Pos, key, error!);
            }
        }
        return instance;
    }

    /// <summary>"unknown key 'x'" with the closest known key and the full list.</summary>
    public static string UnknownKey(string key, IEnumerable<string> known)
    {
        List<string> list = known.Order(StringComparer.Ordinal).ToList();
        if (list.Count == 0) return $"unknown key '{key}': this section takes no keys";
        string? near = list.MinBy(k => Distance(k, key));
        string hint = near is not null && Distance(near, key) <= Math.Max(2, key.Length / 3) ? $"; did you mean '{near}'?" : "";
        return $"unknown key '{key}'{hint} (known: {string.Join(", ", list)})";
    }

    /// <summary>The user-facing name of a bindable type, or null when it cannot be bound.</summary>
    public static string? Describe(Type type)
    {
        Type? inner = Nullable.GetUnderlyingType(type);
        if (inner is not null) return Describe(inner);
        if (type == typeof(string)) return "string";
        if (type == typeof(bool)) return "boolean";
        if (type == typeof(ulong)) return "size";
        if (type == typeof(double) || type == typeof(float)) return "float";
        if (type == typeof(TimeSpan)) return "duration";
        if (TomlValues.IsInteger(type)) return "integer";
        if (type.IsEnum) return "one of: " + string.Join(" | ", Enum.GetNames(type).Select(TomlValues.EnumName));
        Type? element = TomlValues.ElementType(type);
        if (element is not null && Describe(element) is string e) return $"array of {e}";
        return null;
    }

    /// <summary>Formats a value as it would be written in TOML.</summary>
    public static string? FormatValue(object? value) => value switch
    {
        null => null,
        string s => JsonSerializer.Serialize(s),
        bool b => b ? "true" : "false",
        ulong u => u >= 1024 && Sizes.Format(u) is var f && !char.IsDigit(f[^1]) ? $"\"{f}\"" : u.ToString(CultureInfo.InvariantCulture),
        Enum e => $"\"{TomlValues.EnumName(e.ToString())}\"",
        TimeSpan t => $"\"{TomlValues.FormatDuration(t)}\"",
        IFormattable n => n.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable items => "[" + string.Join(", ", items.Cast<object?>().Select(FormatValue)) + "]",
        _ => value.ToString(),
    };

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}

using System.Globalization;
using System.Text.Json;

namespace Vism.Host.Config;

/// <summary>Converts positioned TOML values to CLR values, with a user-facing reason when it cannot.</summary>
public static class TomlValues
{
    private static readonly Dictionary<Type, (long Min, ulong Max)> IntegerRanges = new()
    {
        [typeof(sbyte)] = (sbyte.MinValue, (ulong)sbyte.MaxValue),
        [typeof(byte)] = (0, byte.MaxValue),
        [typeof(short)] = (short.MinValue, (ulong)short.MaxValue),
        [typeof(ushort)] = (0, ushort.MaxValue),
        [typeof(int)] = (int.MinValue, int.MaxValue),
        [typeof(uint)] = (0, uint.MaxValue),
        [typeof(long)] = (long.MinValue, long.MaxValue),
    };

    /// <summary>Whether <paramref name="type"/> is bound from a TOML integer (ulong is a size instead).</summary>
    public static bool IsInteger(Type type) => IntegerRanges.ContainsKey(type);

    /// <summary>The element type of T[], List&lt;T&gt;, IList&lt;T&gt;, IReadOnlyList&lt;T&gt;, IEnumerable&lt;T&gt;; null otherwise.</summary>
    public static Type? ElementType(Type type)
    {
        if (type.IsArray) return type.GetElementType();
        if (!type.IsGenericType) return null;
        Type def = type.GetGenericTypeDefinition();
        return def == typeof(List<>) || def == typeof(IList<>) || def == typeof(IReadOnlyList<>)
            || def == typeof(IEnumerable<>) || def == typeof(ICollection<>) || def == typeof(IReadOnlyCollection<>)
            ? type.GetGenericArguments()[0]
            : null;
    }

    /// <summary>The kebab-case TOML spelling of an enum member name.</summary>
    public static string EnumName(string member) => JsonNamingPolicy.KebabCaseLower.ConvertName(member);

    /// <summary>Converts <paramref name="node"/> to <paramref name="type"/>.</summary>
    public static bool TryConvert(TomlNode node, Type type, out object? value, out string? error)
    {
        value = null;
        error = null;
        Type? inner = Nullable.GetUnderlyingType(type);
        if (inner is not null) type = inner;

        if (type == typeof(string))
        {
            if (node is TomlScalar { Value: string s }) { value = s; return true; }
            return Fail(node, "a string", out error);
        }
        if (type == typeof(bool))
        {
            if (node is TomlScalar { Value: bool b }) { value = b; return true; }
            return Fail(node, "true or false", out error);
        }
        if (type == typeof(ulong))
        {
            if (TryGetSize(node, out ulong size, out error)) { value = size; return true; }
            return false;
        }
        if (IntegerRanges.TryGetValue(type, out (long Min, ulong Max) range))
        {
            if (node is not TomlScalar { Value: long n }) return Fail(node, "an integer", out error);
            if (n < range.Min || (n > 0 && (ulong)n > range.Max))
            {
                error = $"{n} is out of range ({range.Min}..{range.Max})";
                return false;
            }
            value = Convert.ChangeType(n, type, CultureInfo.InvariantCulture);
            return true;
        }
        if (type == typeof(double) || type == typeof(float))
        {
            double? d = node is TomlScalar { Value: double x } ? x : node is TomlScalar { Value: long l } ? l : null;
            if (d is null) return Fail(node, "a number", out error);
            value = type == typeof(float) ? (float)d.Value : d.Value;
            return true;
        }
        if (type == typeof(TimeSpan))
        {
            if (node is TomlScalar { Value: string ds } && TryParseDuration(ds, out TimeSpan t)) { value = t; return true; }
            return Fail(node, "a duration such as \"50us\", \"500ms\", \"5s\", \"2m\" or \"1h\"", out error);
        }
        if (type.IsEnum)
        {
            string[] names = Enum.GetNames(type);
            if (node is TomlScalar { Value: string es })
            {
                foreach (string name in names)
                    if (string.Equals(EnumName(name), es, StringComparison.OrdinalIgnoreCase) || string.Equals(name, es, StringComparison.OrdinalIgnoreCase))
                    {
                        value = Enum.Parse(type, name);
                        return true;
                    }
                error = $"'{es}' is not one of: {string.Join(", ", names.Select(n => $"\"{EnumName(n)}\""))}";
                return false;
            }
            return Fail(node, "one of: " + string.Join(", ", names.Select(n => $"\"{EnumName(n)}\"")), out error);
        }
        Type? element = ElementType(type);
        if (element is not null)
        {
            if (node is not TomlArray array) return Fail(node, "an array", out error);
            Array items = Array.CreateInstance(element, array.Items.Count);
            for (int i = 0; i < array.Items.Count; i++)
            {
                if (!TryConvert(array.Items[i], element, out object? item, out string? itemError))
                {
                    error = $"item {i}: {itemError}";
                    return false;
                }
                items.SetValue(item, i);
            }
            value = type.IsArray || !type.IsGenericType || type.GetGenericTypeDefinition() != typeof(List<>)
                ? items
                : Activator.CreateInstance(type, items);
            return true;
        }
        error = $"options of type {type.Name} cannot be set from TOML";
        return false;
    }

    /// <summary>Reads a byte size: a non-negative integer or a size string ("2MiB").</summary>
    public static bool TryGetSize(TomlNode node, out ulong bytes, out string? error)
    {
        bytes = 0;
        error = null;
        switch (node)
        {
            case TomlScalar { Value: long n } when n >= 0:
                bytes = (ulong)n;
                return true;
            case TomlScalar { Value: long n }:
                error = $"{n} is negative: a size is a number of bytes";
                return false;
            case TomlScalar { Value: string s }:
                return Sizes.TryParse(s, out bytes, out error);
            default:
                return Fail(node, "a size (bytes, or a string such as \"2MiB\")", out error);
        }
    }

    /// <summary>Duration units, longest suffix first: microseconds (<c>us</c>, or <c>µs</c> with the
    /// micro sign or the Greek mu), milliseconds, seconds, minutes, hours.</summary>
    private static readonly (string Suffix, long Ticks)[] DurationUnits =
    [
        ("us", TimeSpan.TicksPerMicrosecond), ("\u00b5s", TimeSpan.TicksPerMicrosecond), ("\u03bcs", TimeSpan.TicksPerMicrosecond),
        ("ms", TimeSpan.TicksPerMillisecond), ("s", TimeSpan.TicksPerSecond), ("m", TimeSpan.TicksPerMinute), ("h", TimeSpan.TicksPerHour),
    ];

    /// <summary>Parses "50us" (or "50µs"), "500ms", "5s", "2m", "1h": a whole number and a unit.
    /// A value beyond what a <see cref="TimeSpan"/> holds is refused.</summary>
    public static bool TryParseDuration(string text, out TimeSpan value)
    {
        value = default;
        string s = text.Trim();
        foreach ((string suffix, long ticks) in DurationUnits)
        {
            if (!s.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)) continue;
            if (!long.TryParse(s[..^suffix.Length].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long n)) return false;
            if (n > TimeSpan.MaxValue.Ticks / ticks) return false;
            value = TimeSpan.FromTicks(n * ticks);
            return true;
        }
        return false;
    }

    /// <summary>Formats a duration the way <see cref="TryParseDuration"/> reads it, in the largest
    /// unit that holds it exactly (microseconds at the finest: a fraction of one is dropped).</summary>
    public static string FormatDuration(TimeSpan t)
    {
        long ticks = t.Ticks;
        if (ticks != 0 && ticks % TimeSpan.TicksPerHour == 0) return $"{ticks / TimeSpan.TicksPerHour}h";
        if (ticks != 0 && ticks % TimeSpan.TicksPerMinute == 0) return $"{ticks / TimeSpan.TicksPerMinute}m";
        if (ticks % TimeSpan.TicksPerSecond == 0) return $"{ticks / TimeSpan.TicksPerSecond}s";
        if (ticks % TimeSpan.TicksPerMillisecond == 0) return $"{ticks / TimeSpan.TicksPerMillisecond}ms";
        return $"{ticks / TimeSpan.TicksPerMicrosecond}us";
    }

    private static bool Fail(TomlNode node, string expected, out string error)
    {
        error = $"expected {expected}, found {Show(node)}";
        return false;
    }

    private static string Show(TomlNode node) => node switch
    {
        TomlScalar { Value: string s } => $"the string {JsonSerializer.Serialize(s)}",
        TomlScalar { Value: bool b } => $"the boolean {(b ? "true" : "false")}",
        TomlScalar { Value: IFormattable f } sc => $"the {sc.TypeName} {f.ToString(null, CultureInfo.InvariantCulture)}",
        _ => $"a{(node.TypeName[0] is 'a' or 'i' ? "n" : "")} {node.TypeName}",
    };
}

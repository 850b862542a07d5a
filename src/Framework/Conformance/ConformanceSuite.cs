using Vism.Conformance.Checks;

namespace Vism.Conformance;

/// <summary>The checks of the conformance suite, in the order the matrix shows them.</summary>
public static class ConformanceSuite
{
    /// <summary>Every check.</summary>
    public static IReadOnlyList<ConformanceCheck> All { get; } =
    [
        .. ConfigChecks.All,
        .. AllocChecks.All,
        .. AttachDetachChecks.All,
        .. PermissionChecks.All,
        .. EventChecks.All,
        .. FeatureChecks.All,
        .. PersistChecks.All,
        .. RingChecks.All,
    ];

    /// <summary>The checks whose id equals one of <paramref name="patterns"/> or starts with one
    /// followed by a dot (<c>alloc</c> selects <c>alloc.too-large</c>, ...).</summary>
    /// <param name="patterns">Ids or id prefixes; empty selects every check.</param>
    /// <returns>The selected checks, in suite order.</returns>
    /// <exception cref="ArgumentException">When a pattern selects nothing.</exception>
    public static IReadOnlyList<ConformanceCheck> Select(IReadOnlyCollection<string> patterns)
    {
        if (patterns.Count == 0)
            return All;
        foreach (string p in patterns)
            if (!All.Any(c => Matches(c, p)))
                throw new ArgumentException($"no check is named '{p}' or starts with '{p}.'; checks: {string.Join(", ", All.Select(c => c.Id))}");
        return [.. All.Where(c => patterns.Any(p => Matches(c, p)))];
    }

    private static bool Matches(ConformanceCheck check, string pattern) =>
        check.Id == pattern || check.Id.StartsWith(pattern + ".", StringComparison.Ordinal);
}

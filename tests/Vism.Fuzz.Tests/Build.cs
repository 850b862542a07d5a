using System.Reflection;

namespace Vism.Fuzz.Tests;

/// <summary>Where this test project's build put the repository's outputs (set in the project file).</summary>
internal static class Build
{
    /// <summary>The repository's root.</summary>
    public static readonly string Repository = Metadata("VismRepository");

    /// <summary>The configuration the tests were built in (Release in CI).</summary>
    public static readonly string Configuration = Metadata("VismConfiguration");

    private static string Metadata(string key) =>
        typeof(Build).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;
}

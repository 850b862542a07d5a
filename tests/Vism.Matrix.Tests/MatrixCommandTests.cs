using System.Diagnostics;
using System.Reflection;
using System.Text.Json;
using System.Xml.Linq;
using Vism.Testing;

namespace Vism.Matrix.Tests;

/// <summary>The <c>vism matrix</c> program, run as a child process the way users and CI run it.</summary>
public sealed class MatrixCommandTests : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromMinutes(5);
    private readonly TempDir _dir = new("vism-matrix");

    public void Dispose() => _dir.Dispose();

    private static string HostOutput =>
        typeof(MatrixCommandTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "VismHostOutput").Value!;

    private static string SamplePlugin => Path.Combine(AppContext.BaseDirectory, "sample-plugins", "Vism.Sample.ShmMemory");

    /// <summary>Runs <c>dotnet vism.dll matrix args</c> from the host's output folder, where its plugins are.</summary>
    private static (int Code, string Out, string Err) Matrix(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(HostOutput, "vism.dll"));
        psi.ArgumentList.Add("matrix");
        foreach (string a in args) psi.ArgumentList.Add(a);
        using Process p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(Wait))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"vism matrix did not finish within {Wait}: {stdout.Result}");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static JsonElement[] Combinations(string jsonFile) =>
        [.. JsonDocument.Parse(File.ReadAllText(jsonFile)).RootElement.GetProperty("combinations").EnumerateArray()];

    private static IEnumerable<(string Combination, string Check, string Outcome, string? Reason)> Results(JsonElement[] combinations) =>
        from c in combinations
        from r in c.GetProperty("results").EnumerateArray()
        select ($"{c.GetProperty("transport").GetString()}/{c.GetProperty("memory").GetString()}/{c.GetProperty("events").GetString()}",
            r.GetProperty("check").GetString()!, r.GetProperty("outcome").GetString()!,
            r.TryGetProperty("reason", out JsonElement reason) ? reason.GetString() : null);

    [SkippableFact]
    public void TheFullMatrixPassesEveryCheckOnEveryInRepoCombination()
    {
        Machine.RequireHugePages(16);
        string json = _dir["matrix.json"], junit = _dir["matrix.xml"];
        (int code, string output, string error) = Matrix("--fail-on-skip", "--json", json, "--junit", junit);

        JsonElement[] combinations = Combinations(json);
        var expected = (from t in new[] { "mmio", "vhost-user" } from m in new[] { "file", "hugetlb" } from e in new[] { "irq", "vq" } select $"{t}/{m}/{e}").ToList();
        var results = Results(combinations).ToList();
        Assert.True(code == 0, $"vism matrix exited {code}:\n{output}\n{error}");
        Assert.Equal(expected, results.Select(r => r.Combination).Distinct().Order(StringComparer.Ordinal));
        Assert.Equal(8, expected.Count);
        Assert.DoesNotContain(results, r => r.Outcome is "failed" or "skipped");
        Assert.True(results.Count(r => r.Outcome == "passed") >= expected.Count * 30, output);

        XElement suites = XDocument.Load(junit).Root!;
        Assert.Equal(expected.Count, suites.Elements("testsuite").Count());
        Assert.Equal(results.Count(r => r.Outcome == "failed").ToString(System.Globalization.CultureInfo.InvariantCulture), suites.Attribute("failures")!.Value);
        Assert.Equal(results.Count, suites.Descendants("testcase").Count());
        Assert.Contains($"{expected.Count} combination(s) x ", output);
    }

    [Fact]
    public void AThirdPartyPluginAuthorRunsTheSuiteAgainstTheirPluginWithOneCommand()
    {
        string json = _dir["sample.json"];
        (int code, string output, string error) = Matrix("--plugins", SamplePlugin, "--memory", "sample-shm", "--json", json);
        var results = Results(Combinations(json)).ToList();
        Assert.True(code == 0, $"vism matrix exited {code}:\n{output}\n{error}");
        Assert.All(results, r => Assert.Contains("/sample-shm/", r.Combination));
        Assert.Contains(results, r => r.Combination.StartsWith("vhost-user/", StringComparison.Ordinal));
        Assert.Contains(results, r => r.Combination.StartsWith("mmio/", StringComparison.Ordinal));
        Assert.Contains(results, r => r.Check == "alloc.no-memory" && r.Outcome == "passed");
        Assert.DoesNotContain(results, r => r.Outcome is "failed" or "skipped");
    }

    [Fact]
    public void ACombinationThisMachineCannotComposeIsSkippedWithThePluginsReasonAndFailsOnlyWithFailOnSkip()
    {
        // The file plugin's validation refuses a region directory below a regular file.
        string file = _dir["a-file"];
        File.WriteAllText(file, "");
        string[] args = ["--transport", "mmio", "--memory", "file", "--events", "none", "--check", "alloc.too-large", "--option", $"file.directory=\"{file}/regions\""];
        (int code, string output, _) = Matrix(args);
        Assert.True(code == 0, output);
        Assert.Contains("mmio/file/none skip", output);
        Assert.Contains($"why: the combination's config is refused: memory.directory: {file}/regions cannot be created: {file} is not a directory", output);
        Assert.Contains("fix: ", output);

        (code, _, _) = Matrix([.. args, "--fail-on-skip"]);
        Assert.Equal(1, code);
    }

    [Fact]
    public void SelectedChecksAndKindsAreTheOnlyOnesRun()
    {
        string json = _dir["some.json"];
        (int code, string output, string error) = Matrix("--transport", "vhost-user", "--memory", "file", "--events", "none", "--check", "alloc", "--check", "detach.unassigned", "--json", json);
        Assert.True(code == 0, $"{output}\n{error}");
        var results = Results(Combinations(json)).ToList();
        Assert.Equal(["vhost-user/file/none"], results.Select(r => r.Combination).Distinct());
        Assert.Equal(["alloc.token-offset", "alloc.too-large", "alloc.small-occupies-region", "alloc.no-free-area", "alloc.no-memory", "alloc.cleared", "detach.unassigned"],
            results.Select(r => r.Check));
    }

    [Fact]
    public void UnknownKindsOptionsAndChecksAreRefusedWithExitCode2()
    {
        (int code, _, string error) = Matrix("--transport", "carrier-pigeon");
        Assert.Equal(2, code);
        Assert.Contains("--transport carrier-pigeon: not installed; installed transport kinds: mmio, vhost-user", error);

        (code, _, error) = Matrix("--check", "alloc.nonsense");
        Assert.Equal(2, code);
        Assert.Contains("no check is named 'alloc.nonsense'", error);

        (code, _, error) = Matrix("--option", "vectors");
        Assert.Equal(2, code);
        Assert.Contains("expected KIND.KEY=VALUE", error);
    }

    [Fact]
    public void ListNamesEveryCheckWithTheStatementItProves()
    {
        (int code, string output, _) = Matrix("--list");
        Assert.Equal(0, code);
        Assert.Contains("alloc.too-large: ALLOC of more than region_size is ERR; exactly region_size is OK", output);
        Assert.Contains("proves (virtio-ism v1, Alloc ISM Region, device normative): \"If size is greater than region_size, the device MUST set ack to VIRTIO_ISM_ERR.\"", output);
        Assert.Contains("proves (DESIGN.md, Decisions, Permissions)", output);
    }
}

using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Vism.Fuzz.Tests;

/// <summary>The fuzz targets as CI runs them (docs/fuzzing.md).</summary>
[Collection(AflCollection.Name)]
public sealed partial class FuzzTargetTests(ITestOutputHelper output)
{
    public static TheoryData<string> TargetNames() => [.. Targets.All.Keys];

    /// <summary>Every seed (and every input that once crashed a target, kept as a seed) passes its
    /// target's rules: no regression of a fixed finding reaches main.</summary>
    [Theory]
    [MemberData(nameof(TargetNames))]
    public void Corpus_EverySeed_PassesItsTarget(string target)
    {
        string corpus = Path.Combine(Build.Repository, "fuzz", "corpus", target);
        string[] seeds = Directory.GetFiles(corpus);
        Assert.NotEmpty(seeds);
        Environment.SetEnvironmentVariable("VISM_FUZZ_PLUGINS", Path.Combine(Build.Repository, "src/Framework/Host/bin", Build.Configuration, "net10.0/plugins"));
        using IFuzzTarget t = Targets.All[target]();
        var failures = new List<string>();
        foreach (string seed in seeds)
        {
            try
            {
                t.Run(File.ReadAllBytes(seed));
            }
            catch (Exception ex)
            {
                failures.Add($"{Path.GetFileName(seed)}: {ex.GetType().Name}: {ex.Message}");
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>scripts/fuzz.sh runs every target under AFL++ for 2 seconds: each executes
    /// inputs, finds coverage, and nothing crashes or hangs.</summary>
    [SkippableFact]
    public void FuzzScript_EveryTargetForAFewSeconds_FindsNoCrash()
    {
        bool root = Environment.UserName == "root";
        Skip.IfNot(root || File.Exists("/usr/bin/afl-fuzz"), "AFL++ is not installed and cannot be installed without root");
        var psi = new ProcessStartInfo("bash", [Path.Combine(Build.Repository, "scripts/fuzz.sh"), "all", "2"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = Build.Repository,
        };
        psi.Environment["VISM_FUZZ_NO_BUILD"] = "1";
        psi.Environment["VISM_FUZZ_CONFIGURATION"] = Build.Configuration;
        using Process p = Process.Start(psi)!;
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(5)), "scripts/fuzz.sh did not finish within 5 minutes");
        output.WriteLine(stdout);
        output.WriteLine(stderr.Result);
        foreach (string target in Targets.All.Keys)
        {
            Match m = Summary().Match(stdout.Split('\n').FirstOrDefault(l => l.StartsWith($"fuzz: {target}: ", StringComparison.Ordinal)) ?? "");
            Assert.True(m.Success, $"no summary line for {target}:\n{stdout}\n{stderr.Result}");
            Assert.True(long.Parse(m.Groups["execs"].Value) > 0, $"{target} executed nothing");
            Assert.True(long.Parse(m.Groups["edges"].Value) > 0, $"{target} found no coverage (is the instrumentation applied?)");
            Assert.Equal("0", m.Groups["crashes"].Value);
            Assert.Equal("0", m.Groups["hangs"].Value);
        }
        Assert.Equal(0, p.ExitCode);
    }

    [GeneratedRegex(@"^fuzz: \S+: \d+s, (?<execs>\d+) execs \(.*\), (?<edges>\d+) edges, \d+ paths, (?<crashes>\d+) crashes, (?<hangs>\d+) hangs")]
    private static partial Regex Summary();
}

/// <summary>The tests that start fuzz processes run one at a time: afl-fuzz's two-second runs and the
/// fork-server test each get the machine to themselves (on two cores, one slowed the other).</summary>
[CollectionDefinition(Name)]
public sealed class AflCollection
{
    public const string Name = "afl";
}

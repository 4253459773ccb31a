// Command caller is a real AWS SDK for Go v2 client for the agent's tests.
//
// It resolves credentials with the SDK's default chain (the environment decides:
// container endpoint or IMDS), calls STS GetCallerIdentity at AWS_ENDPOINT_URL_STS
// and prints the caller's ARN. The SDK packaged by Debian predates
// AWS_ENDPOINT_URL_STS, so the endpoint is set here explicitly.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail("load config", err)
	}
	endpoint := os.Getenv("AWS_ENDPOINT_URL_STS")
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(endpoint)
	})

	out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fail("GetCallerIdentity", err)
	}
	fmt.Println(*out.Arn)
}

func fail(step string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", step, err)
	os.Exit(1)
}
